"""The task registry: every task with an engine has a spec, every spec's wire codec round-trips, and the
router and the mesh service learn a task from its spec alone: a fake task registered here is routed
locally, served and routed over the in-memory mesh, and self-benchmarked, with no router or service
change and no model packs."""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from edge_agent.client.schemas import (
    Continuation,
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranscribeStats,
    TranscriptSegment,
    TranslateRequest,
    TranslateResult,
    TranslateStats,
)
from edge_agent.engines.base import Engine, engine_class
from edge_agent.errors import InvalidRequestError, NoRouteError, PeerRefusedError
from edge_agent.mesh.protocol import Chunk, Offer, Request, decode, encode
from edge_agent.models.selection import Plan, TaskPlan
from edge_agent.router import Router
from edge_agent.router_settings import RouterSettings
from edge_agent.task_benchmarks import Speed
from edge_agent.task_specs import LOCAL_ONLY, REGISTRY, TaskSpec, serve, spec_for
from edge_agent.tasks import TASKS, Task
from tests.support.meshsim import household

RID = "ab" * 16
SESSION = "cd" * 8

# A request and its answer for every registered task: adding a task means adding its sample here.
SAMPLES: dict[str, tuple[BaseModel, list[BaseModel], int]] = {
    "generate": (
        GenerateRequest.from_prompt(
            "Hi.", system="Be brief.", max_tokens=9, stop=["\n"], continuation=Continuation(token_ids=[1, 2])
        ),
        [
            GenerateChunk(index=0, text="Hel", token_ids=[5, 6]),
            GenerateChunk(index=1, text="", token_ids=[7]),
            GenerateChunk(
                index=2,
                text="lo",
                token_ids=[8],
                stats=GenerateStats(
                    prompt_tokens=3,
                    completion_tokens=4,
                    ttft_ms=1.5,
                    decode_tok_s=20.0,
                    total_ms=9.0,
                    finish_reason="stop",
                ),
            ),
        ],
        7,  # tokens still to generate: max_tokens minus the two resumed ones
    ),
    "embed": (
        EmbedRequest(texts=["a fridge", "a freezer"]),
        [EmbedResult(vectors=[[0.25, -1.0], [0.5, 0.0]], dim=2, model="m", truncated=[1])],
        2,
    ),
    "translate": (
        TranslateRequest(texts=["Hello.", "Bye."], source="en", target="pt", beam_size=2, remember=False),
        [
            TranslateResult(
                translations=["Olá.", "Tchau."],
                pair="en-pt",
                model="m",
                stats=TranslateStats(sentences=2, source_tokens=4, target_tokens=5, total_ms=3.0, cached=1),
            )
        ],
        2,
    ),
    "transcribe": (
        TranscribeRequest(
            segments=[
                SpeechSegment.from_pcm(0, b"\x01\x00" * 8000),
                SpeechSegment.from_pcm(900, b"\x02\x00" * 1600),
            ],
            timestamps=True,
        ),
        [
            TranscribeResult(
                text=" Lights off.",
                segments=[TranscriptSegment(start_ms=0, end_ms=600, text=" Lights off.", avg_logprob=-0.2)],
                language="en",
                model="m",
                stats=TranscribeStats(speech_ms=600, windows=1, tokens=4, total_ms=80.0),
            )
        ],
        600,  # milliseconds of speech: 500 + 100
    ),
}


def test_every_task_with_an_engine_has_a_spec_and_every_spec_an_engine() -> None:
    for task in TASKS:
        has_engine = importlib.util.find_spec(f"edge_agent.engines.{task}") is not None
        assert has_engine == (task in REGISTRY or task in LOCAL_ONLY), task
        assert not (task in REGISTRY and task in LOCAL_ONLY), task
    for task, spec in REGISTRY.items():
        assert spec.name == task
        engine = engine_class(task)
        assert issubclass(engine, Engine) and engine.task == task
    for task in LOCAL_ONLY:  # an engine here, never a route: a peer asking for it is told so
        assert engine_class(task).task == task
        with pytest.raises(NoRouteError, match=f"this version cannot run {task} \\(no task spec\\)"):
            spec_for(task)


@pytest.mark.parametrize("task", sorted(REGISTRY))
def test_a_spec_round_trips_its_request_and_answer_through_the_wire(task: Task) -> None:
    assert set(SAMPLES) == set(REGISTRY), "add a sample for the new task"
    spec = REGISTRY[task]
    request, answer, units = SAMPLES[task]
    assert spec.work_units(request) == units
    wire = decode(
        encode(Request(id=RID, task=task, body=spec.encode_request(request), reply_session=SESSION,
                       deadline_ms=1000))
    )  # fmt: skip
    assert isinstance(wire, Request)
    assert spec.decode_request(wire.body) == request
    for seq, item in enumerate(answer):
        chunk = decode(encode(spec.encode_item(RID, item).model_copy(update={"seq": seq})))
        assert isinstance(chunk, Chunk)
        assert chunk.final == (seq == len(answer) - 1)
        assert spec.decode_item(chunk) == item
    if not spec.streaming:  # a one-shot answer is the final chunk's body: nothing before it counts
        assert spec.decode_item(Chunk(id=RID, seq=0, text="x")) is None
        for body in (None, {"unexpected": 1}):
            with pytest.raises(ValueError):
                spec.decode_item(Chunk(id=RID, seq=0, final=True, body=body))


# -- a fake task, known only through its spec --------------------------------------------------------------


class Shout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    words: list[str]


class Shouted(BaseModel):
    words: list[str]
    by: str


@dataclass
class FakeAgent:
    name: str


def _no_empty_words(request: Shout) -> None:
    if not all(request.words):
        raise InvalidRequestError("empty word")


async def _shout_here(agent: Any, request: Shout) -> AsyncGenerator[Shouted, None]:
    yield Shouted(words=[w.upper() for w in request.words], by=agent.name)


async def _bench_shout(run: Any, variant: str | None) -> Speed:
    """Runs on this device's runner (a real measurement would be far above an offer's bounds here)."""
    assert [answer async for answer in run(Shout(words=["a", "b"]))] == [Shouted(words=["A", "B"], by="hub")]
    return Speed(rate=42.0, first_ms=3.0)


@pytest.fixture
def shout(monkeypatch: pytest.MonkeyPatch) -> TaskSpec[Shout, Shouted]:
    spec = TaskSpec(
        name="vad",  # a task of the vocabulary without a spec (local-only): free for a fake one here
        request_model=Shout,
        result_model=Shouted,
        streaming=False,
        work_units=lambda request: len(request.words),
        benchmark=_bench_shout,
        validate=_no_empty_words,
        run_local=_shout_here,
    )
    monkeypatch.setitem(REGISTRY, "vad", spec)
    return spec


def _local_plan(pack: Any = None) -> Plan:
    """A plan running the fake task here (``pack``: what self-benchmarks name in the offer)."""
    return Plan(profile_id="test", budget_mb=0, tasks={"vad": TaskPlan("vad", "local", pack, "", slot="vad")})


async def test_a_registered_task_is_routed_locally(shout: TaskSpec[Shout, Shouted]) -> None:
    router = Router(
        plan=_local_plan(),
        policy=RouterSettings(),
        local=FakeAgent("me"),
        local_offers={"vad": Offer(task="vad", pack="shout@fp32", rate=10, first_ms=1)},
        local_name="me",
    )
    decision = router.decide("vad", Shout(words=["a", "b"]))
    assert decision.ranked[0].detail == "first 1 ms + 2 at 10/s claimed"
    assert await router.call(shout, Shout(words=["hi"])) == (Shouted(words=["HI"], by="me"), "me (local)")
    with pytest.raises(InvalidRequestError, match="empty word"):  # checked before routing
        await router.call(shout, Shout(words=[""]))


async def test_a_registered_task_is_served_and_routed_over_the_mesh(
    tmp_path: Path, shout: TaskSpec[Shout, Shouted]
) -> None:
    hub_agent = FakeAgent("hub")

    def handler(req: Request, requester: object) -> AsyncGenerator[Chunk, None]:
        return serve(req, lambda spec, request: spec.run_here(hub_agent, request))  # type: ignore[arg-type]

    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["vad"], handler=handler)
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        nothing_here = Plan(profile_id="fridge", budget_mb=0)
        router = Router(plan=nothing_here, policy=RouterSettings(), endpoint=fridge.endpoint)
        result = await router.call(shout, Shout(words=["hi", "there"]))
        assert result == (Shouted(words=["HI", "THERE"], by="hub"), "hub")
        # The server checks a body through the same spec: what pydantic accepts but validate refuses,
        # and what is no Shout at all, come back as 'invalid'.
        peer = fridge.endpoint.peers.get(hub.id)
        assert peer is not None
        for body in ({"words": [""]}, {"words": "hi"}):
            with pytest.raises(PeerRefusedError) as refused:
                async for _ in fridge.endpoint.stream(peer, "vad", body, deadline_s=2, stall_s=1):
                    pass
            assert refused.value.code == "invalid"


async def test_the_mesh_service_serves_and_benchmarks_a_registered_task(
    tmp_path: Path, shout: TaskSpec[Shout, Shouted]
) -> None:
    from benchmarks.rigs.meshkit import config, provision
    from edge_agent.hearth import agent_router
    from edge_agent.profiles import load_profile
    from edge_agent.service import MeshService

    provision(tmp_path, tmp_path, "hub", "hub")
    plan = _local_plan(SimpleNamespace(pack_id="shout@fp32"))
    cfg, agent = config("hub", 1883, "hub"), FakeAgent("hub")
    route = agent_router(cfg, plan, agent)  # type: ignore[arg-type]
    svc = MeshService(cfg, load_profile("hub"), plan, tmp_path, agent=agent, router=route)  # type: ignore[arg-type]
    req = Request(id=secrets.token_hex(16), task="vad", body={"words": ["hi"]}, reply_session=SESSION,
                  deadline_ms=1000)  # fmt: skip
    chunks = [c async for c in svc._handle(req, svc.certificate)]
    assert [(c.final, shout.decode_item(c)) for c in chunks] == [(True, Shouted(words=["HI"], by="hub"))]
    await svc.self_benchmark()
    assert svc.offers["vad"] == Offer(task="vad", pack="shout@fp32", rate=42, first_ms=3)
