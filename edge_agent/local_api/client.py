"""The CLI's side of the local socket: the running agent's façade (`edge_agent.facade.Household`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ValidationError

from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    TranscribeRequest,
    TranscribeResult,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.errors import HearthError, InvalidRequestError, LocalApiError
from edge_agent.facade import PeersReport
from edge_agent.local_api.wire import (
    EVENT,
    MAX_LINE,
    ChunkEvent,
    CorrectCall,
    CorrectionsCall,
    CorrectionsEvent,
    DoneEvent,
    EmbedCall,
    ErrorEvent,
    Event,
    GenerateCall,
    PeersCall,
    PeersEvent,
    ProgressEvent,
    PullCall,
    PulledEvent,
    PulledOutcome,
    ResultEvent,
    RouteEvent,
    TranscribeCall,
    TranslateCall,
    WithdrawCall,
    encode_line,
)
from edge_agent.mesh.corrections import Correction
from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager

__all__ = ["LocalClient", "RemoteAnswer"]


class RemoteAnswer:
    """A generate answer streamed from the running agent; shaped like `router.RoutedStream`."""

    def __init__(self, client: LocalClient, call: GenerateCall) -> None:
        self._client, self._call = client, call
        self.reason, self.lines = "", list[str]()
        self.served_by, self.hops, self.failovers = "nobody", "", 0
        self.stats: GenerateStats | None = None

    async def __aiter__(self) -> AsyncGenerator[GenerateChunk, None]:
        async for event in self._client._exchange(self._call):
            if isinstance(event, RouteEvent):
                self.reason, self.lines = event.reason, event.lines
            elif isinstance(event, ChunkEvent):
                yield event.chunk
            elif isinstance(event, DoneEvent):
                self.served_by, self.hops, self.failovers, self.stats = (
                    event.served_by, event.hops, event.failovers, event.stats)  # fmt: skip


class LocalClient:
    """The façade of the agent running on this device, over its local socket (an `edge_agent.facade.
    Household`, as `Hearth` is). ``models``: engines of this process's own, made on first use (the VAD
    of `hearth listen` runs here, never in the agent)."""

    def __init__(
        self, path: Path, timeout_s: float = 600.0, *, models: Callable[[], ModelManager] | None = None
    ) -> None:
        self.path, self.timeout_s = path, timeout_s
        self.wait_s = 0.0
        self._make_models = models
        self._models: ModelManager | None = None

    @property
    def models(self) -> ModelManager:
        if self._models is None:
            if self._make_models is None:
                raise HearthError("this client of the running agent has no engines of its own")
            self._models = self._make_models()
        return self._models

    async def __aenter__(self) -> Self:
        if not self.path.exists():
            raise LocalApiError(f"no agent socket at {self.path}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def wait_for_peers(self, task: Task, timeout: float) -> None:
        self.wait_s = timeout  # the agent waits, on its own (long-lived) view of the mesh

    async def _exchange(self, call: BaseModel) -> AsyncIterator[Event]:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
        except OSError as exc:
            raise LocalApiError(f"cannot reach the running agent at {self.path}: {exc}") from exc
        try:
            writer.write(encode_line(call))
            await writer.drain()
            while True:
                async with asyncio.timeout(self.timeout_s):
                    raw = await reader.readline()
                if not raw:
                    return
                try:
                    event = EVENT.validate_json(raw)
                except ValidationError as exc:
                    raise LocalApiError(f"the running agent sent an unreadable answer: {exc}") from None
                if isinstance(event, ErrorEvent):
                    invalid = event.kind in ("InvalidRequestError", "invalid")
                    err = (InvalidRequestError if invalid else HearthError)(event.message)
                    err.exit_code = event.exit_code
                    raise err
                yield event
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def generate(self, request: GenerateRequest) -> RemoteAnswer:
        return RemoteAnswer(self, GenerateCall(request=request, wait_s=self.wait_s))

    async def _result(self, call: BaseModel) -> tuple[dict[str, Any], str]:
        async for event in self._exchange(call):
            if isinstance(event, ResultEvent):
                return event.result, event.served_by
        raise LocalApiError("the running agent closed the connection without an answer")

    async def embed(self, request: EmbedRequest) -> tuple[EmbedResult, str]:
        result, by = await self._result(EmbedCall(request=request, wait_s=self.wait_s))
        return EmbedResult.model_validate(result), by

    async def translate(self, request: TranslateRequest) -> tuple[TranslateResult, str]:
        result, by = await self._result(TranslateCall(request=request, wait_s=self.wait_s))
        return TranslateResult.model_validate(result), by

    async def transcribe(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        result, by = await self._result(TranscribeCall(request=request, wait_s=self.wait_s))
        return TranscribeResult.model_validate(result), by

    async def transcribe_command(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """The running agent routes it as any window: the caller checks the transcript's origin
        (``served_by``) afterwards (edge_agent.voice.trust)."""
        return await self.transcribe(request)

    async def pull_updates(
        self,
        models: set[str] | None = None,
        on_progress: Callable[[list[UpdateStatus]], None] | None = None,
        wait_s: float = 3.0,
    ) -> list[PulledOutcome]:
        """The running agent's update round (see `Hearth.pull_updates`)."""
        call = PullCall(models=sorted(models) if models is not None else None)
        async for event in self._exchange(call):
            if isinstance(event, ProgressEvent) and on_progress is not None:
                on_progress(event.updates)
            elif isinstance(event, PulledEvent):
                return event.outcomes
        raise LocalApiError("the running agent closed the connection without an answer")

    async def _records(self, call: BaseModel) -> list[Correction]:
        async for event in self._exchange(call):
            if isinstance(event, CorrectionsEvent):
                return event.records
        raise LocalApiError("the running agent closed the connection without an answer")

    async def correct(self, pair: str, source: str, target: str, model: str = "") -> Correction:
        [record] = await self._records(CorrectCall(pair=pair, source=source, target=target, model=model))
        return record

    async def withdraw_correction(self, record_id: str, *, here: bool = False) -> Correction:
        [record] = await self._records(WithdrawCall(id=record_id, here=here))
        return record

    async def corrections(self) -> list[Correction]:
        return await self._records(CorrectionsCall())

    async def peers(self, wait_s: float | None = None) -> PeersReport:
        """The running agent's view (it has heard the household all along); with ``wait_s`` it first
        waits that long for a peer offering generate and measures the round trip to them."""
        async for event in self._exchange(PeersCall(wait_s=wait_s or 0.0)):
            if isinstance(event, PeersEvent):
                return PeersReport.model_validate(event.report)
        raise LocalApiError("the running agent closed the connection without an answer")
