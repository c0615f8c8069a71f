"""Model manager on real packs: lazy load, idle unload, RAM budget, offload-only tasks."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.agent import Agent
from edge_agent.client.schemas import EmbedRequest, GenerateRequest
from edge_agent.config import AgentConfig
from edge_agent.engines.manager import ModelManager
from edge_agent.errors import BudgetExceededError, NoLocalModelError
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import FirmwareProfile, load_profile

pytestmark = pytest.mark.slow  # the built packs


def _profile(base: str, **changes: object) -> FirmwareProfile:
    return load_profile(base).model_copy(update=changes)


def _manager(store: PackStore, profile: FirmwareProfile, **kw: object) -> ModelManager:
    return ModelManager(store, profile, plan_for_profile(profile, [p.manifest for p in store.list()]), **kw)  # type: ignore[arg-type]


async def test_lazy_load_and_idle_unload(store: PackStore) -> None:
    mgr = _manager(store, load_profile("hub"), idle_unload_s=60)
    assert mgr.loaded_tasks() == []  # nothing is loaded at start
    async with mgr.use("embed") as engine:
        assert engine.embed_array(["hello"]).shape == (1, 384)
        assert mgr.unload_idle(now=10**9) == []  # never unloaded while borrowed
    assert mgr.loaded_tasks() == ["embed"]
    assert mgr.unload_idle() == []  # not idle long enough
    assert mgr.unload_idle(now=10**9) == ["embed"]
    assert mgr.loaded_tasks() == [] and mgr.used_mb == 0


async def test_budget_makes_room_by_unloading_idle_models(store: PackStore) -> None:
    llm = store.get("smollm2-135m-instruct@int4").manifest.peak_ram_mb
    emb = store.get("all-minilm-l6-v2@int8").manifest.peak_ram_mb
    budget = llm + emb / 2  # room for the LLM, or the embedder, not both
    prof = _profile("hub", ram_mb=1000, model_ram_share=budget / 1000)
    mgr = _manager(store, prof)
    async with mgr.use("generate"):
        # The LLM is busy: loading the embedder must be refused, not squeezed in.
        with pytest.raises(
            BudgetExceededError, match=r"would pass the budget .* held by busy models \(generate\)"
        ):
            async with mgr.use("embed"):
                pass
    async with mgr.use("embed"):  # the LLM is idle now: it is unloaded to make room
        assert mgr.loaded_tasks() == ["embed"]
    assert mgr.used_mb <= mgr.budget_mb


async def test_offload_only_task_is_refused_with_the_plan_reason(store: PackStore) -> None:
    mgr = _manager(store, load_profile("fridge-panel"))
    with pytest.raises(
        NoLocalModelError, match=r"'generate' cannot run on fridge-panel \(offload-only\).*budget is 153 MB"
    ):
        async with mgr.use("generate"):
            pass


async def test_tampered_pack_is_refused_at_load(tmp_path, store: PackStore) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from edge_agent.errors import PackIntegrityError

    copy = PackStore(tmp_path / "store")
    src = store.get("all-minilm-l6-v2@int8")
    staged = tmp_path / "staged"
    shutil.copytree(src.path, staged)
    installed = copy.install(staged, src.manifest)
    tok = installed.path / "tokenizer.json"
    tok.chmod(0o644)
    data = bytearray(tok.read_bytes())
    data[100] ^= 1
    tok.write_bytes(bytes(data))
    mgr = _manager(copy, load_profile("hub"))
    with pytest.raises(PackIntegrityError, match=r"tokenizer\.json has sha256"):
        async with mgr.use("embed"):
            pass


async def test_agent_streams_and_embeds_concurrently(store: PackStore) -> None:
    async with Agent(AgentConfig(), load_profile("hub"), store) as agent:

        async def chat() -> str:
            return "".join(
                [
                    c.text
                    async for c in agent.generate(
                        GenerateRequest.from_prompt(
                            "What is the capital of France? Answer in one sentence.", max_tokens=40
                        )
                    )
                ]
            )

        text, emb = await asyncio.gather(
            chat(), agent.embed(EmbedRequest(texts=["a fridge", "a refrigerator"]))
        )
        assert "Paris" in text and emb.dim == 384
        # Cancelling a consumer mid-stream stops cleanly and frees the engine for the next request.
        stream = agent.generate(GenerateRequest.from_prompt("Write a long poem about snow.", max_tokens=200))
        async for _ in stream:
            break
        await stream.aclose()
        again = [c async for c in agent.generate(GenerateRequest.from_prompt("Say hi.", max_tokens=8))]
        assert again[-1].stats is not None
