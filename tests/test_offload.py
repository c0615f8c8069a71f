"""Offload over a real Mosquitto: a fridge panel's chat is served by the hub and streamed back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.brokers import Mosquitto, run_mosquitto
from edge_agent.engines.generate import GenerateEngine
from edge_agent.engines.interfaces import EmbedRequest, GenerateRequest
from edge_agent.models.store import PackStore
from tests.meshkit import config, provision, service

PROMPT = "Describe a kitchen in three sentences."


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


def reference(engine: GenerateEngine, max_tokens: int = 48) -> str:
    text, _ = engine.complete(GenerateRequest.from_prompt(PROMPT, max_tokens=max_tokens))
    return text


async def test_fridge_chat_is_served_by_the_hub_and_streamed_back(
    tmp_path: Path, broker: Mosquitto, store: PackStore, llm_int4: GenerateEngine
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    hub = service(tmp_path / "hub", config("hub", broker.port, "hub"), store)
    fridge = service(tmp_path / "fridge", config("fridge", broker.port, "fridge-panel"), store)
    assert fridge.plan.for_task("generate").mode == "offload-only"
    async with hub, fridge:
        assert hub.offers["generate"].rate > 10  # measured by the self-benchmark
        await fridge.wait_for_peers("generate", timeout=5)
        routed = fridge.router.generate(GenerateRequest.from_prompt(PROMPT, max_tokens=48))
        assert routed.decision.ranked[0].name == "hub", routed.decision.explain()
        assert any("offload-only" in (c.excluded or "") for c in routed.decision.excluded)
        chunks = [c async for c in routed]
        assert routed.served_by == "hub" and routed.failovers == 0
        assert "".join(c.text for c in chunks) == reference(llm_int4)
        assert routed.stats is not None and routed.stats.completion_tokens > 10
        # Embeddings run on the fridge itself (its plan has a local int8 MiniLM).
        result, served_by = await fridge.router.embed(EmbedRequest(texts=["The fridge door is open."]))
        assert served_by.endswith("(local)") and result.dim == 384
        assert hub.node.dropped == {} and fridge.node.dropped == {}
