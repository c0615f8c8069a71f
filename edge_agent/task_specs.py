"""The task registry: what the agent, router and service know about each task, in one ``TaskSpec``.

Adding a task (say ``transcribe``) means one spec here and one engine (``engines/transcribe.py``, an
``engines.base.Engine``). The ModelManager finds the engine, the Agent runs it, the Router routes and
sizes the request, and the MeshService serves and self-benchmarks it, all through the spec.

Typed wire bodies: a request's ``body`` and a final chunk's ``body`` cross the mesh as plain JSON objects
(``mesh.protocol.TaskBody``) that the mesh never parses, because the typed models belong to the engines
and the mesh library must not import them (tests/test_layering.py). So the typed union by task is this
registry: a body is validated against its task's model at the boundary, once on each side (``serve`` for
the server, the router's sources for the requester), rather than a pydantic union in the protocol that
the mesh could not even name. This module sits above both: it may import the engines' models and the
mesh protocol; neither of them imports it.

Validation once per hop: a request is checked (its model, then ``TaskSpec.validate``) where it enters a
device, the router for this device's own requests and ``serve`` for a peer's, and travels on as its typed
model; the Agent runs what it is handed. Chunks are numbered once, by the mesh's exchange layer as they
leave (``seq``); the items here carry that number as they came.

The registry knows the Agent only as ``LocalEngines`` (what runs a request here), so it imports nothing
above it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.errors import EngineError, InvalidRequestError, NoLocalModelError, NoRouteError
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import Chunk, Request, TaskBody
from edge_agent.task_benchmarks import (
    Benchmark,
    bench_embed,
    bench_generate,
    bench_transcribe,
    bench_translate,
    quiet_noise,
)
from edge_agent.tasks import Task

log = logging.getLogger(__name__)

ReqT = TypeVar("ReqT", bound=BaseModel)
ItemT = TypeVar("ItemT", bound=BaseModel)


class LocalEngines(Protocol):
    """What runs a task's request on this device's engines (the Agent, `edge_agent.agent`)."""

    def run(self, spec: TaskSpec[ReqT, ItemT], request: ReqT) -> AsyncGenerator[ItemT, None]:
        """Run an already validated ``request`` here, yielding its answer."""
        ...


LocalRunner = Callable[[LocalEngines, ReqT], AsyncGenerator[ItemT, None]]


@dataclass(frozen=True)
class HealthProbe(Generic[ReqT, ItemT]):
    """How a model update's health check runs a task (`edge_agent.updates.health`): a fixed text (and
    the pack's variant) becomes one request; the answer's items become the text that the publisher
    records and a receiving device must match."""

    request: Callable[[str, str | None], ReqT]
    answer: Callable[[list[ItemT]], str]


def _accept(request: BaseModel) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class TaskSpec(Generic[ReqT, ItemT]):
    name: Task
    request_model: type[ReqT]
    result_model: type[ItemT]
    """What one run yields: the result, or (streaming) each chunk of the answer."""
    streaming: bool
    work_units: Callable[[ReqT], int]
    """The request's size in the unit of an offer's rate (tokens still to generate, texts, ...)."""
    benchmark: Benchmark[ReqT, ItemT]
    validate: Callable[[ReqT], None] = _accept
    """Raise InvalidRequestError for what the model lets through; run once where a request enters a
    device (the router for its own, ``serve`` for a peer's)."""
    variant: Callable[[ReqT], str] | None = None
    """The plan slot within the task a request needs (a translation's language pair); None: the task
    has no variants (callers test it rather than call a function that answers None)."""
    variant_model: str = "model"
    """What serves one variant, for errors: 'no translation model for fr→pt'."""
    run_local: LocalRunner[ReqT, ItemT] | None = None
    """How this device runs a request; None: the task's engine, through ``Agent.run``."""
    item_units: Callable[[ItemT], int] | None = None
    """Work done by one streamed item (tokens in a chunk); None: each result completes the request."""
    encode_chunk: Callable[[str, ItemT], Chunk] | None = None
    decode_chunk: Callable[[Chunk], ItemT | None] | None = None
    """A streaming task's codec; None: the result travels whole in the final chunk's body."""
    health: HealthProbe[ReqT, ItemT] | None = None
    """The known inference a model update of this task must pass; None: packs of it cannot carry one."""

    def __post_init__(self) -> None:
        if self.streaming and None in (self.item_units, self.encode_chunk, self.decode_chunk):
            raise TypeError(f"streaming task {self.name} needs item_units, encode_chunk and decode_chunk")

    # -- running --------------------------------------------------------------------------------------

    def run_here(self, agent: LocalEngines, request: ReqT) -> AsyncGenerator[ItemT, None]:
        return self.run_local(agent, request) if self.run_local else agent.run(self, request)

    def units(self, request: ReqT, item: ItemT) -> int:
        """Work one item of an answer to ``request`` represents (for measuring a peer's speed)."""
        return self.item_units(item) if self.item_units else self.work_units(request)

    def require_variant(self, request: ReqT, known: Collection[str], where: str, none: str = "none") -> None:
        """InvalidRequestError unless the request's variant is in ``known`` (or it needs none)."""
        variant = self.variant(request) if self.variant is not None else None
        if variant is not None and variant not in known:
            arrows = ", ".join(v.replace("-", "→") for v in known) or none
            raise InvalidRequestError(
                f"no {self.variant_model} for {variant.replace('-', '→')} {where} (available: {arrows})"
            )

    # -- wire codec -----------------------------------------------------------------------------------

    def encode_request(self, request: ReqT) -> TaskBody:
        return request.model_dump(mode="json")

    def decode_request(self, body: TaskBody) -> ReqT:
        """Raises pydantic.ValidationError (which the endpoint reports as 'invalid')."""
        return self.request_model.model_validate(body)

    def encode_item(self, request_id: str, item: ItemT) -> Chunk:
        if self.encode_chunk is not None:
            return self.encode_chunk(request_id, item)
        return Chunk(id=request_id, seq=0, final=True, body=item.model_dump(mode="json"))

    def decode_item(self, chunk: Chunk) -> ItemT | None:
        """The item a chunk carries (None: nothing for the caller yet); ValueError if malformed
        (pydantic's ValidationError is one)."""
        if self.decode_chunk is not None:
            return self.decode_chunk(chunk)
        if not chunk.final:
            return None
        if chunk.body is None:
            raise ValueError("a final chunk without a result")
        return self.result_model.model_validate(chunk.body)


# -- health probes (a model update's known inference) ---------------------------------------------------

_PROBE_TOKENS = 24


def _translate_probe(text: str, pair: str | None) -> TranslateRequest:
    if pair is None:
        raise EngineError("a translation health check needs its language pair")
    source, target = pair.split("-")
    return TranslateRequest(texts=[text], source=source, target=target)


def _transcribe_probe(text: str, pair: str | None) -> TranscribeRequest:
    """Speech cannot be written down in a manifest: the text seeds two seconds of quiet noise, and what
    the pack makes of that (greedy, so repeatable) is its answer."""
    pcm = quiet_noise(text, seconds=2)
    return TranscribeRequest(segments=[SpeechSegment.from_pcm(0, pcm)], max_tokens=_PROBE_TOKENS)


# -- the tasks ------------------------------------------------------------------------------------------


def _tokens_left(request: GenerateRequest) -> int:
    done = len(request.continuation.token_ids) if request.continuation else 0
    return max(1, request.max_tokens - done)


def _generate_chunk(request_id: str, chunk: GenerateChunk) -> Chunk:
    """Text and tokens stream as they come; the stats ride on the final chunk."""
    body = chunk.stats.model_dump(mode="json") if chunk.stats else None
    return Chunk(
        id=request_id,
        seq=0,
        text=chunk.text,
        token_ids=chunk.token_ids,
        final=chunk.stats is not None,
        body=body,
    )


def _generate_item(msg: Chunk) -> GenerateChunk:
    stats = GenerateStats.model_validate(msg.body) if msg.final and msg.body else None
    return GenerateChunk(index=msg.seq, text=msg.text, token_ids=msg.token_ids, stats=stats)


GENERATE: TaskSpec[GenerateRequest, GenerateChunk] = TaskSpec(
    name="generate",
    request_model=GenerateRequest,
    result_model=GenerateChunk,
    streaming=True,
    work_units=_tokens_left,
    benchmark=bench_generate,
    validate=GenerateRequest.validate_text,
    item_units=lambda chunk: len(chunk.token_ids),
    encode_chunk=_generate_chunk,
    decode_chunk=_generate_item,
    health=HealthProbe(
        lambda text, _: GenerateRequest.from_prompt(text, max_tokens=_PROBE_TOKENS),
        lambda items: "".join(item.text for item in items),
    ),
)

EMBED: TaskSpec[EmbedRequest, EmbedResult] = TaskSpec(
    name="embed",
    request_model=EmbedRequest,
    result_model=EmbedResult,
    streaming=False,
    work_units=lambda request: len(request.texts),
    benchmark=bench_embed,
    # No requester-side checks: the batch limit is the serving engine's, which checks the texts too.
    health=HealthProbe(lambda text, _: EmbedRequest(texts=[text]), lambda items: f"{items[-1].dim} dims"),
)

TRANSLATE: TaskSpec[TranslateRequest, TranslateResult] = TaskSpec(
    name="translate",
    request_model=TranslateRequest,
    result_model=TranslateResult,
    streaming=False,
    work_units=lambda request: len(request.texts),
    benchmark=bench_translate,
    validate=TranslateRequest.validate_text,
    variant=lambda request: request.pair,
    variant_model="translation model",
    health=HealthProbe(_translate_probe, lambda items: str(items[-1].translations[0])),
)

TRANSCRIBE: TaskSpec[TranscribeRequest, TranscribeResult] = TaskSpec(
    name="transcribe",
    request_model=TranscribeRequest,
    result_model=TranscribeResult,
    streaming=False,
    # Milliseconds of speech: the encoder's cost is per window, the decoder's per word, both grow with it.
    work_units=lambda request: max(1, request.speech_ms),
    benchmark=bench_transcribe,
    validate=TranscribeRequest.validate_audio,
    health=HealthProbe(_transcribe_probe, lambda items: str(items[-1].text)),
)

REGISTRY: dict[Task, TaskSpec[Any, Any]] = {
    spec.name: spec for spec in (GENERATE, EMBED, TRANSLATE, TRANSCRIBE)
}
"""Every task this version runs, by name. Tasks without a spec are neither routed nor served."""

LOCAL_ONLY: frozenset[Task] = frozenset({"vad"})
"""Tasks with an engine that never cross the mesh: the VAD is what decides which sounds may leave the
device, so it always runs where the microphone is (edge_agent.voice.local_vad)."""


def spec_for(task: Task) -> TaskSpec[Any, Any]:
    spec = REGISTRY.get(task)
    if spec is None:
        raise NoRouteError(f"this version cannot run {task} (no task spec)")
    return spec


PeerRunner = Callable[[TaskSpec[Any, Any], Any], AsyncGenerator[Any, None]]
"""Runs a peer's decoded request on this device: usually ``spec.run_here``, with service hooks."""
ServeHook = Callable[[Any], AsyncGenerator[Any, None]]
"""Serves a peer's request for one task instead of the task's own runner."""


async def serve(req: Request, run: PeerRunner) -> AsyncGenerator[Chunk, None]:
    """Answer a peer's request: the one place a request body becomes its task's typed request, and
    what runs becomes chunks. Errors reach the requester as the endpoint's failure codes."""
    spec = REGISTRY.get(req.task)
    if spec is None:
        raise NoLocalModelError(f"{req.task} is not served over the mesh yet")
    request = spec.decode_request(req.body)
    spec.validate(request)
    async with contextlib.aclosing(run(spec, request)) as items:
        async for item in items:
            yield spec.encode_item(req.id, item)


class PeerServer:
    """The mesh endpoint's handler on a serving device: each peer's request is decoded and validated
    once (``serve``) and runs on ``local`` (the Agent), or on the task's hook in ``hooks`` (read at each
    request, so a hook added later serves the next one). One object between the exchange layer and the
    engines, so a served request crosses no other layer on its way in or its chunks on their way out."""

    def __init__(self, local: LocalEngines, hooks: Mapping[Task, ServeHook] | None = None) -> None:
        self.local = local
        self.hooks: Mapping[Task, ServeHook] = hooks if hooks is not None else {}

    async def __call__(self, req: Request, requester: DeviceCertificate) -> AsyncGenerator[Chunk, None]:
        log.info("serving %s for %s", req.task, requester.name)
        async with contextlib.aclosing(serve(req, self._run)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _run(self, spec: TaskSpec[Any, Any], request: Any) -> AsyncGenerator[Any, None]:
        hook = self.hooks.get(spec.name)
        return hook(request) if hook is not None else spec.run_here(self.local, request)
