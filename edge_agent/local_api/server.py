"""The agent's side of the local socket: serves its façade to this user's CLI commands only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

from edge_agent.errors import HearthError
from edge_agent.facade import AgentHousehold
from edge_agent.local_api.wire import (
    CALL,
    MAX_CONNECTIONS,
    MAX_LINE,
    Call,
    ChunkEvent,
    CorrectCall,
    CorrectionsCall,
    CorrectionsEvent,
    DoneEvent,
    EmbedCall,
    ErrorEvent,
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
from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.tasks import Task

log = logging.getLogger(__name__)

__all__ = ["LocalApiServer"]


def _same_user(sock: socket.socket) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class LocalApiServer:
    """Serves one agent's façade on its local socket."""

    def __init__(self, hearth: AgentHousehold, path: Path) -> None:
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
                writer.write(encode_line(ErrorEvent(kind="busy", message="too many local connections")))
                return
            async with self._slots:
                try:
                    raw = await reader.readline()
                    call = CALL.validate_json(raw)
                except (ValueError, ValidationError, asyncio.LimitOverrunError) as exc:
                    bad = ErrorEvent(kind="invalid", message=f"bad local request: {exc}"[:500], exit_code=2)
                    writer.write(encode_line(bad))
                    return
                try:
                    async for event in self._serve(call):
                        writer.write(encode_line(event))
                        await writer.drain()
                except HearthError as exc:
                    writer.write(encode_line(ErrorEvent(kind=type(exc).__name__, message=str(exc),
                                                  exit_code=exc.exit_code)))  # fmt: skip
                except (ConnectionError, OSError):
                    raise
                except Exception as exc:  # a bug: this call fails, the server and the agent go on
                    self.hearth.supervisor.drop("local-socket", type(exc).__name__, exc,
                                                f"a local {call.op} call failed")  # fmt: skip
                    bug = ErrorEvent(kind="internal", message="internal error in the agent (see its log)",
                                     exit_code=1)  # fmt: skip
                    writer.write(encode_line(bug))
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
            yield RouteEvent(reason=routed.reason, lines=routed.lines)
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
