"""The running agent's local socket: how `hearth chat/embed/translate/peers` reach it.

A Unix socket in the device's mesh state directory (0700), itself 0600, and every connection's peer
credentials must be this user's: only the owner of the agent can use it. One JSON request per
connection, answered with JSON lines (pydantic models both ways, bounded in size and number of
connections). The CLI thereby never opens the agent's state while it runs: one process, one send
counter, one replay window.

    client                                   agent
    {"op": "generate", "request": {...}} ->
                                         <-  {"event": "route", "reason", "lines"}
                                         <-  {"event": "chunk", "chunk": {...}}   (streamed)
                                         <-  {"event": "done", "served_by", "hops", "stats"}
    {"op": "embed" | "translate", ...}   ->
                                         <-  {"event": "result", "result": {...}, "served_by"}
    {"op": "peers", "wait_s"}            ->
                                         <-  {"event": "peers", "report": {...}}
    {"op": "correct" | "withdraw" | "corrections", ...} ->
                                         <-  {"event": "corrections", "records": [...]}
    {"op": "pull", "models"}             ->
                                         <-  {"event": "progress", "updates": [...]}   (as it goes)
                                         <-  {"event": "pulled", "outcomes": [...]}
    any failure                          <-  {"event": "error", "kind", "message", "exit_code"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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
from edge_agent.mesh.corrections import Correction
from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager
    from edge_agent.hearth import Hearth

log = logging.getLogger(__name__)

__all__ = ["LocalApiServer", "LocalClient"]

MAX_LINE = 4 << 20
MAX_CONNECTIONS = 16


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateCall(_Msg):
    op: Literal["generate"] = "generate"
    request: GenerateRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class EmbedCall(_Msg):
    op: Literal["embed"] = "embed"
    request: EmbedRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class TranslateCall(_Msg):
    op: Literal["translate"] = "translate"
    request: TranslateRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class TranscribeCall(_Msg):
    op: Literal["transcribe"] = "transcribe"
    request: TranscribeRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class PeersCall(_Msg):
    op: Literal["peers"] = "peers"
    wait_s: float = Field(default=0.0, ge=0, le=30)


class PullCall(_Msg):
    op: Literal["pull"] = "pull"
    models: list[str] | None = Field(default=None, max_length=64)


class CorrectCall(_Msg):
    op: Literal["correct"] = "correct"
    pair: str = Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")
    source: str = Field(min_length=1, max_length=1000)
    target: str = Field(min_length=1, max_length=3000)
    model: str = Field(default="", max_length=128)


class WithdrawCall(_Msg):
    op: Literal["withdraw"] = "withdraw"
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    here: bool = False
    """Only decline it for this device's own translations (see edge_agent.mesh.corrections)."""


class CorrectionsCall(_Msg):
    op: Literal["corrections"] = "corrections"


Call = Annotated[
    GenerateCall
    | EmbedCall
    | TranslateCall
    | TranscribeCall
    | PeersCall
    | PullCall
    | CorrectCall
    | WithdrawCall
    | CorrectionsCall,
    Field(discriminator="op"),
]
CALL: TypeAdapter[Call] = TypeAdapter(Call)


class RouteEvent(_Msg):
    event: Literal["route"] = "route"
    reason: str
    lines: list[str]


class ChunkEvent(_Msg):
    event: Literal["chunk"] = "chunk"
    chunk: GenerateChunk


class DoneEvent(_Msg):
    event: Literal["done"] = "done"
    served_by: str
    hops: str
    failovers: int
    stats: GenerateStats | None


class ResultEvent(_Msg):
    event: Literal["result"] = "result"
    result: dict[str, Any]
    served_by: str


class PeersEvent(_Msg):
    event: Literal["peers"] = "peers"
    report: dict[str, Any]


class ProgressEvent(_Msg):
    event: Literal["progress"] = "progress"
    updates: list[UpdateStatus]


class PulledOutcome(_Msg):
    pack_id: str
    sequence: int
    state: str
    reason: str = ""


class PulledEvent(_Msg):
    event: Literal["pulled"] = "pulled"
    outcomes: list[PulledOutcome]


class CorrectionsEvent(_Msg):
    event: Literal["corrections"] = "corrections"
    records: list[Correction]


class ErrorEvent(_Msg):
    event: Literal["error"] = "error"
    kind: str
    message: str
    exit_code: int = 1


Event = Annotated[
    RouteEvent
    | ChunkEvent
    | DoneEvent
    | ResultEvent
    | PeersEvent
    | ProgressEvent
    | PulledEvent
    | CorrectionsEvent
    | ErrorEvent,
    Field(discriminator="event"),
]
EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def _line(model: BaseModel) -> bytes:
    return model.model_dump_json().encode() + b"\n"


def _same_user(sock: socket.socket) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class LocalApiServer:
    """Serves one agent's façade on its local socket."""

    def __init__(self, hearth: Hearth, path: Path) -> None:
        self.hearth, self.path = hearth, path
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a crashed agent (we hold the state lock)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            if sock is None or not _same_user(sock):
                log.warning("refused a local connection from another user")
                return
            if self._slots.locked():
                writer.write(_line(ErrorEvent(kind="busy", message="too many local connections")))
                return
            async with self._slots:
                try:
                    raw = await reader.readline()
                    call = CALL.validate_json(raw)
                except (ValueError, ValidationError, asyncio.LimitOverrunError) as exc:
                    writer.write(_line(ErrorEvent(kind="invalid", message=f"bad local request: {exc}"[:500],
                                                  exit_code=2)))  # fmt: skip
                    return
                try:
                    async for event in self._serve(call):
                        writer.write(_line(event))
                        await writer.drain()
                except HearthError as exc:
                    writer.write(_line(ErrorEvent(kind=type(exc).__name__, message=str(exc),
                                                  exit_code=exc.exit_code)))  # fmt: skip
                except (ConnectionError, OSError):
                    raise
                except Exception as exc:  # a bug: this call fails, the server and the agent go on
                    self.hearth.supervisor.drop("local-socket", type(exc).__name__, exc,
                                                f"a local {call.op} call failed")  # fmt: skip
                    writer.write(_line(ErrorEvent(kind="internal", message="internal error in the agent "
                                                  "(see its log)", exit_code=1)))  # fmt: skip
        except (ConnectionError, OSError) as exc:
            log.debug("local client went away: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()

    async def _serve(self, call: Call) -> AsyncIterator[BaseModel]:
        hearth = self.hearth
        if (
            isinstance(call, GenerateCall | EmbedCall | TranslateCall | TranscribeCall | PeersCall)
            and call.wait_s
        ):
            task: Task = "embed" if isinstance(call, EmbedCall) else "translate"
            if isinstance(call, TranscribeCall):
                task = "transcribe"
            if isinstance(call, GenerateCall | PeersCall):
                task = "generate"
            await hearth.wait_for_peers(task, call.wait_s)
        if isinstance(call, GenerateCall):
            routed = hearth.generate(call.request)
            yield RouteEvent(reason=routed.decision.reason, lines=routed.decision.explain())
            async with contextlib.aclosing(routed.__aiter__()) as chunks:
                async for chunk in chunks:
                    yield ChunkEvent(chunk=chunk)
            yield DoneEvent(served_by=routed.served_by, hops=routed.hops, failovers=routed.failovers,
                            stats=routed.stats)  # fmt: skip
        elif isinstance(call, EmbedCall):
            result, by = await hearth.embed(call.request)
            yield ResultEvent(result=result.model_dump(mode="json"), served_by=by)
        elif isinstance(call, TranslateCall):
            translated, by = await hearth.translate(call.request)
            yield ResultEvent(result=translated.model_dump(mode="json"), served_by=by)
        elif isinstance(call, TranscribeCall):
            heard, by = await hearth.transcribe(call.request)
            yield ResultEvent(result=heard.model_dump(mode="json"), served_by=by)
        elif isinstance(call, PullCall):
            async for event in self._pull(call):
                yield event
        elif isinstance(call, CorrectCall):
            record = await hearth.correct(call.pair, call.source, call.target, call.model)
            yield CorrectionsEvent(records=[record])
        elif isinstance(call, WithdrawCall):
            yield CorrectionsEvent(records=[await hearth.withdraw_correction(call.id, here=call.here)])
        elif isinstance(call, CorrectionsCall):
            yield CorrectionsEvent(records=await hearth.corrections())
        else:
            yield PeersEvent(report=hearth.peers_report().model_dump(mode="json"))

    async def _pull(self, call: PullCall) -> AsyncIterator[BaseModel]:
        """The agent's own update round, its progress streamed as it goes (newest state only)."""
        latest: asyncio.Queue[list[UpdateStatus]] = asyncio.Queue(maxsize=1)

        def progress(updates: list[UpdateStatus]) -> None:
            with contextlib.suppress(asyncio.QueueEmpty):
                latest.get_nowait()
            latest.put_nowait(updates)

        models = set(call.models) if call.models is not None else None
        round_ = asyncio.ensure_future(self.hearth.pull_updates(models, progress))
        try:
            while not round_.done():
                waiter = asyncio.ensure_future(latest.get())
                await asyncio.wait({round_, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    yield ProgressEvent(updates=waiter.result())
                else:
                    waiter.cancel()
            outcomes = round_.result()
        finally:
            round_.cancel()
        yield PulledEvent(outcomes=[PulledOutcome(pack_id=o.pack_id, sequence=o.sequence, state=o.state,
                                                  reason=o.reason) for o in outcomes])  # fmt: skip


class RemoteAnswer:
    """A generate answer streamed from the running agent; shaped like `router.RoutedStream`."""

    def __init__(self, client: LocalClient, call: GenerateCall) -> None:
        self._client, self._call = client, call
        self.reason, self.lines = "", list[str]()
        self.served_by, self.hops, self.failovers = "nobody", "", 0
        self.stats: GenerateStats | None = None

    async def __aiter__(self) -> AsyncIterator[GenerateChunk]:
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
            writer.write(_line(call))
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
