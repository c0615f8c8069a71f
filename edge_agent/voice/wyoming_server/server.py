"""The Wyoming server itself: the listening socket, who may connect, how many at once, supervision.

Wyoming has no authentication, by design (a trusted LAN), and Home Assistant's client sends no secret,
so the lock is the client's address: the server binds loopback unless told otherwise and answers only
the addresses in ``allow`` (``[voice] wyoming_allow``; loopback by default). Connections are bounded in
all and per source address; each is a `Session` (its own bounds: idle time, hold before audio, one
command's worth of audio, one transcription). The listening loop runs under the agent's `Supervisor`
(restarted if its socket dies), and a connection that fails inside Hearth is dropped and counted there;
the others carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from edge_agent.errors import HearthError
from edge_agent.supervision import Supervisor
from edge_agent.voice.settings import WyomingLimits, WyomingSettings
from edge_agent.voice.transcript import Transcriber
from edge_agent.voice.wyoming_advert import WyomingAdvertiser, should_advertise
from edge_agent.voice.wyoming_server.clients import (
    LOOPBACK,
    Address,
    Network,
    RefusalLog,
    allowed,
    peer_address,
    peer_name,
)
from edge_agent.voice.wyoming_server.info import WHISPER_TINY_EN, AsrModelInfo, languages_of, server_info
from edge_agent.voice.wyoming_server.protocol import MAX_HEADER_BYTES, refuse_and_close
from edge_agent.voice.wyoming_server.session import Session, SessionSettings

if TYPE_CHECKING:
    from wyoming.info import Info

log = logging.getLogger("edge_agent.voice.wyoming_server")

DEFAULT_PORT = 10300
"""Wyoming's customary port for speech to text (wyoming-faster-whisper's)."""
CLOSE_S = 10.0
"""Shutdown: the advert's goodbye and the listening socket, at most."""


class WyomingServerState(enum.Enum):
    UNOPENED = "unopened"
    SERVING = "serving"
    CLOSED = "closed"


class WyomingServer:
    """A Wyoming speech-to-text server: an async context manager, serving while open. One task group
    holds every connection; closing cancels them (and says the zeroconf goodbye first)."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        name: str = "Hearth",
        models: Sequence[AsrModelInfo] = (WHISPER_TINY_EN,),
        allow: Sequence[Network] = LOOPBACK,
        advertise: bool = False,
        limits: WyomingLimits | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``port`` 0 takes a free port (read ``.port`` once open). ``host`` is loopback by default:
        Home Assistant on another machine needs an address it reaches (the caller's explicit choice),
        and its address in ``allow`` (only those clients are answered). ``limits``: what a client can
        make the server hold (the longest utterance, connections in all and per address, idle and hold
        times). ``advertise``: zeroconf ``_wyoming._tcp`` on the bound addresses. ``supervisor``: the
        agent's (restarts, drops); a private one if None."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, not {port}")
        if not name.strip():
            raise ValueError("name must not be empty")
        if not models:
            raise ValueError("at least one model must be described")
        if not allow:
            raise ValueError("allow must name at least one client address or network")
        self.transcriber = transcriber
        self.host, self.port, self.name = host, port, name.strip()
        self.models = list(models)
        self.languages = languages_of(self.models)
        self.limits = limits if limits is not None else WyomingLimits()
        self.max_seconds = self.limits.max_seconds
        self.max_connections, self.max_per_source = self.limits.max_connections, self.limits.max_per_source
        self.allow, self.advertise = tuple(allow), advertise
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.state = WyomingServerState.UNOPENED
        self.advertiser: WyomingAdvertiser | None = None
        self.addresses: list[str] = []
        """The bound socket addresses, once open."""
        self.info: Info = server_info(self.name, self.models)
        self._server: asyncio.Server | None = None
        self._group: asyncio.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()
        self._connections: set[asyncio.Task[None]] = set()
        self._turned_away: set[asyncio.Task[None]] = set()
        self._serving: asyncio.Task[None] | None = None
        self.sources: Counter[str] = Counter()
        """Open connections per client address."""
        self._refusals = RefusalLog(self.limits.refusal_log_hosts)

    @classmethod
    def for_voice(
        cls,
        settings: WyomingSettings,
        transcriber: Transcriber,
        *,
        name: str = "Hearth",
        supervisor: Supervisor | None = None,
    ) -> Self:
        """From the voice settings' Wyoming part (the agent's [voice] wyoming_*: `VoiceSection.settings`)."""
        return cls(
            transcriber, host=settings.host, port=settings.port, name=name, allow=settings.allow,
            advertise=should_advertise(settings.advertise, settings.host), limits=settings.limits,
            supervisor=supervisor,
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not WyomingServerState.UNOPENED:
            raise RuntimeError(f"this Wyoming server is {self.state.value}; make a new one")
        try:
            self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.callback(self._cancel_connections)  # runs first: the group then only waits
            self._server = await self._listen()
            self._stack.push_async_callback(self._stop_listening)
            self.addresses = [str(s.getsockname()[0]) for s in self._server.sockets]
            self.port = int(self._server.sockets[0].getsockname()[1])
            self.state = WyomingServerState.SERVING
            serving = self.supervisor.supervise(
                "wyoming", self._serve, stopping=lambda: self.state is not WyomingServerState.SERVING
            )
            self._serving = self._group.create_task(serving, name="wyoming")
            log.info("serving Wyoming speech to text on %s port %d", ", ".join(self.addresses), self.port)
            if self.advertise:  # entered last, left first: the goodbye goes out before the port closes
                self.advertiser = WyomingAdvertiser(self.name, self.port, self.addresses)
                await self._stack.enter_async_context(self.advertiser)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.state is WyomingServerState.CLOSED:
            return
        self.state = WyomingServerState.CLOSED
        await self._stack.aclose()

    async def _listen(self) -> asyncio.Server:
        try:
            return await asyncio.start_server(self._accept, self.host, self.port, limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise HearthError(
                f"cannot serve Wyoming on {self.host}:{self.port}: {exc.strerror or exc} "
                "([voice] wyoming_host / wyoming_port)"
            ) from None

    async def _serve(self) -> None:
        """The supervised loop: serve until closed; a listening socket that closes under us (not by
        our own close) is an unexpected failure, and the supervisor's restart listens again."""
        if self._server is None or not self._server.is_serving():
            self._server = await self._listen()
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # we are being stopped
                raise
            raise RuntimeError("the listening socket was closed") from None

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._cancel_connections()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_S):
                await server.wait_closed()

    def _cancel_connections(self) -> None:
        for task in (*self._connections, *self._turned_away):
            task.cancel()
        if self._serving is not None:
            self._serving.cancel()

    # -- connections ----------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by asyncio for each connection: it runs in our task group, or is turned away. A
        failure in here is Hearth's bug: the connection is dropped and counted, the server goes on."""
        host, address = peer_address(writer)
        peer = peer_name(writer)
        if self.state is not WyomingServerState.SERVING or self._group is None:
            writer.transport.abort()
            return
        try:
            self._admit(reader, writer, host, address, peer)
        except RuntimeError:  # the task group is shutting down
            writer.transport.abort()
        except Exception as exc:
            self.supervisor.drop("wyoming", type(exc).__name__, exc, f"wyoming {peer}: could not take it")
            writer.transport.abort()

    def _admit(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        address: Address | None,
        peer: str,
    ) -> None:
        assert self._group is not None
        if not allowed(address, self.allow):
            self._refusals.warn(host, f"wyoming {peer}: refused, not in [voice] wyoming_allow")
            self._turn_away(reader, writer, "forbidden", f"{host} may not use this Wyoming server "
                            "(not in its allow-list: [voice] wyoming_allow)")  # fmt: skip
        elif len(self._connections) >= self.max_connections:
            log.warning("wyoming %s: turned away, %d connections already open", peer, self.max_connections)
            self._turn_away(reader, writer, "busy", f"busy: {self.max_connections} Wyoming connections "
                            "are already open here; try again later")  # fmt: skip
        elif self.sources[host] >= self.max_per_source:
            self._refusals.warn(host, f"wyoming {peer}: turned away, {self.max_per_source} connections "
                              "from it already open")  # fmt: skip
            self._turn_away(reader, writer, "busy", f"busy: {self.max_per_source} Wyoming connections from "
                            f"{host} are already open here; try again later")  # fmt: skip
        else:
            session = Session(self._session_settings(), reader, writer, peer)
            task = self._group.create_task(session.run(), name=f"wyoming {peer}")
            self._connections.add(task)
            self.sources[host] += 1
            task.add_done_callback(lambda done: self._closed(done, host))

    def _session_settings(self) -> SessionSettings:
        return SessionSettings(transcriber=self.transcriber, info=self.info, languages=self.languages,
                               limits=self.limits, supervisor=self.supervisor)  # fmt: skip

    def _closed(self, task: asyncio.Task[None], host: str) -> None:
        self._connections.discard(task)
        self.sources[host] -= 1
        if self.sources[host] <= 0:
            del self.sources[host]

    def _turn_away(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, text: str
    ) -> None:
        """An error event, then closed; past as many refusals in flight as connections, no answer at
        all (a flood)."""
        assert self._group is not None
        if len(self._turned_away) >= self.max_connections:
            writer.transport.abort()
            return
        task = self._group.create_task(refuse_and_close(reader, writer, code, text), name="wyoming busy")
        self._turned_away.add(task)
        task.add_done_callback(self._turned_away.discard)
