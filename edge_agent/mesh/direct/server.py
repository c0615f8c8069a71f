"""The serving side of direct links: a plain TCP listener whose connections are counted before any TLS
work, then TLS, the member's proof, and its asks answered one frame each.

Bounded before anything costly (issue 21, N5): a connection is counted before its TLS handshake starts,
at most ``max_pending`` unauthenticated in all and ``max_pending_per_source`` from one address (IPv6:
one /64); past that it is closed at once, so a flood of half-open handshakes costs one file descriptor
per slot, never more. Nothing reads an accepted socket before TLS owns it (`tls.start_tls`). TLS,
challenge and hello must all be done within ``handshake_s``. Authenticated links are bounded in total
and per device; header size, answer length and idle time too. Supervised: one connection or one ask
that fails unexpectedly is dropped and counted; the server and every other link go on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from edge_agent.errors import DirectLinkError, HearthError
from edge_agent.mesh.direct.addresses import source_of
from edge_agent.mesh.direct.carrier import LinkEvents, read_message, send_message
from edge_agent.mesh.direct.client import LOOP
from edge_agent.mesh.direct.frames import (
    Answer,
    Ask,
    Hostile,
    Welcome,
    read_frame_or_message,
    write_frame,
)
from edge_agent.mesh.direct.handshake import challenge_client
from edge_agent.mesh.direct.tls import start_tls
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.settings import DirectLimits
from edge_agent.supervision import Supervisor

__all__ = ["LinkServer", "Serve"]

log = logging.getLogger(__name__)

Serve = Callable[[str, Ask], Awaitable[bytes]]
"""Answers an ask from a member (by device id); raises DirectLinkError to say no (not held, ...)."""


class LinkServer:
    """Serves members' asks on ``listener`` while running (`start` to `close`)."""

    def __init__(
        self,
        node: MeshNode,
        serve: Serve,
        listener: socket.socket,
        context: ssl.SSLContext,
        fingerprint: str,
        limits: DirectLimits,
        supervisor: Supervisor,
    ) -> None:
        self.node, self.serve, self.limits, self.supervisor = node, serve, limits, supervisor
        self.listener, self.context, self.fingerprint = listener, context, fingerprint
        self.served: dict[asyncio.Task[None], tuple[str, asyncio.StreamWriter | socket.socket | None]] = {}
        """Connections being served -> the member on the other end ("" until it authenticated) and what
        ends it: the accepted socket until TLS takes it, None during the TLS handshake (cancelling the
        task ends it), then the stream writer."""
        self.pending: Counter[str] = Counter()
        """Unauthenticated connections being handshaken, by source (see `source_of`)."""
        self.events: LinkEvents | None = None
        """Who hears the messages links carry (set by `DirectLinks.carry`)."""
        self.active: dict[asyncio.Task[None], float] = {}
        """When each served link last read a frame or sent a message (monotonic): one idle longer than
        ``idle_s`` is closed by the sweeper (no timer per frame on the hot path)."""
        self.carried: set[asyncio.Task[None]] = set()
        """Served links that carried a message (their end is news for the endpoint's streams)."""
        self._acceptor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._acceptor = asyncio.create_task(
            self.supervisor.supervise(LOOP, self._accept_loop, stopping=lambda: self._closed),
            name="direct-links-accept",
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="direct-links-idle")

    async def _sweep(self) -> None:
        """Close served links idle for over ``idle_s`` (checked a few times per ``idle_s``)."""
        every = min(1.0, self.limits.idle_s / 4)
        while not self._closed:
            await asyncio.sleep(every)
            now = time.monotonic()
            for task, (device, end) in list(self.served.items()):
                since = self.active.get(task)
                if device and since is not None and now - since > self.limits.idle_s and end is not None:
                    log.debug("closing the idle direct link from %s", device[:8])
                    end.close()

    def close(self) -> list[asyncio.Task[None]]:
        """Stop accepting and end every connection; returns the tasks (cancelled) to await."""
        self._closed = True
        tasks = [t for t in (self._acceptor, self._sweeper) if t is not None]
        for task in tasks:
            task.cancel()
        for task, (_, end) in self.served.items():
            if end is not None:
                end.close()
            task.cancel()
        return tasks + list(self.served)

    def _link_from(self, device_id: str) -> tuple[asyncio.Task[None], asyncio.StreamWriter] | None:
        """The newest authenticated link ``device_id`` made to us that is still open: its task and writer."""
        for task, (device, end) in reversed(list(self.served.items())):
            if device == device_id and isinstance(end, asyncio.StreamWriter) and not end.is_closing():
                return task, end
        return None

    def writer_to(self, device_id: str) -> asyncio.StreamWriter | None:
        """An authenticated link from ``device_id`` to send on (the newest), if it made one."""
        link = self._link_from(device_id)
        return link[1] if link is not None else None

    async def send_message(self, device_id: str, channel: Channel, payload: bytes) -> bool:
        """On a link ``device_id`` made to us; False if there is none. Raises DirectLinkError."""
        link = self._link_from(device_id)
        if link is None:
            return False
        task, writer = link
        self.carried.add(task)
        self.active[task] = time.monotonic()  # sending is activity too: a long answer keeps its link
        try:
            await send_message(writer, channel, payload)
        except (ConnectionError, OSError, RuntimeError) as exc:
            writer.close()
            raise DirectLinkError(f"link from {device_id[:8]} broke: {exc or type(exc).__name__}") from None
        return True

    def close_listener(self) -> None:
        self.listener.close()

    def revoked(self, devices: frozenset[str]) -> None:
        for device, end in list(self.served.values()):
            if device in devices and end is not None:
                end.close()

    async def _accept_loop(self) -> None:
        """Accept connections while open (supervised). An accepted socket is only counted here, never
        read: its first bytes are the client's ClientHello, for TLS (`tls.start_tls`).

        Not ``loop.sock_accept``: on CPython 3.11's own loop, a close that cancels it just as a client
        arrives accepts the connection into a cancelled future, and its socket is never closed. Here
        the task waits for the listener to be readable, then accepts in its own step."""
        loop = asyncio.get_running_loop()
        fd = self.listener.fileno()
        while not self._closed:
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, readable)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            while not self._closed:
                try:
                    conn, peer = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    break  # accepted all that waited
                except ConnectionAbortedError:
                    continue  # the client left before we got to it
                except OSError as exc:  # out of descriptors or buffers: the backlog waits meanwhile
                    log.warning("direct links: cannot accept a connection (%s); retrying in %g s", exc,
                                self.limits.accept_retry_s)  # fmt: skip
                    await asyncio.sleep(self.limits.accept_retry_s)
                    break
                conn.setblocking(False)
                self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: object) -> None:
        """Count a new connection before its TLS handshake, or refuse it past the bounds."""
        source = source_of(peer)
        limits = self.limits
        if (
            sum(self.pending.values()) >= limits.max_pending
            or self.pending[source] >= limits.max_pending_per_source
        ):
            self.node.dropped["DirectLinkFlood"] += 1
            conn.close()  # no handshake, no waiting: the descriptor is free at once
            return
        self.pending[source] += 1
        task = asyncio.create_task(self._accept(conn, source), name=f"direct-from-{source}")
        self.served[task] = ("", conn)

    async def _accept(self, conn: socket.socket, source: str) -> None:
        """One counted connection: whatever goes wrong in it stays in it (expected failures are
        handled below; anything else is dropped and counted)."""
        task = asyncio.current_task()
        assert task is not None
        held = True

        def release() -> None:
            """Free this connection's unauthenticated slot (once: after the hello, or at the end)."""
            nonlocal held
            if held:
                held = False
                self.pending[source] -= 1
                if self.pending[source] <= 0:
                    del self.pending[source]

        try:
            with self.supervisor.guard(LOOP, f"dropped a direct link from {source}"):
                await self._serve_connection(task, source, conn, release)
        finally:
            release()
            self.active.pop(task, None)
            device, end = self.served.pop(task, ("", None))
            if end is not None:
                end.close()
            if task in self.carried:
                self.carried.discard(task)
                if self.events is not None and device:
                    self.events.link_down(device)

    async def _serve_connection(
        self, task: asyncio.Task[None], source: str, conn: socket.socket, authenticated: Callable[[], None]
    ) -> None:
        handshake_s = self.limits.handshake_s
        try:
            try:
                async with asyncio.timeout(handshake_s):  # TLS, challenge and hello: all of it
                    self.served[task] = ("", None)  # the socket is TLS's now (closed with it)
                    reader, writer = await start_tls(conn, self.context, handshake_s)
                    self.served[task] = ("", writer)
                    device = await challenge_client(self.node, self.fingerprint, reader, writer, self.limits)
            except TimeoutError:
                raise Hostile(f"no TLS handshake and hello within {handshake_s:g} s") from None
            authenticated()
            served = [d for d, _ in self.served.values() if d]
            if (
                len(served) >= self.limits.max_served_links
                or served.count(device) >= self.limits.max_links_per_device
            ):
                self.node.dropped["DirectLinkFlood"] += 1
                return
            self.served[task] = (device, writer)
            self.active[task] = time.monotonic()
            await write_frame(writer, Welcome())
            await self._answer(device, reader, writer)
        except Hostile as exc:
            self.node.dropped["DirectLinkRefused"] += 1
            log.info("refused a direct link from %s: %s", source, exc)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError, TimeoutError):
            pass  # the other end left, or sat idle

    async def _answer(self, device: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        while True:
            ask = await read_frame_or_message(reader, Ask, self.limits.max_header_bytes)
            if task is not None:
                self.active[task] = time.monotonic()
            if not isinstance(ask, Ask):
                payload = await read_message(self.node, device, ask, reader)
                if self.events is not None and task is not None:
                    self.carried.add(task)
                    self.events.message(device, ask.channel, payload)
                continue
            try:
                self.node.membership.member(device)
            except HearthError as exc:
                raise Hostile(str(exc)) from None
            try:
                data = await self.serve(device, ask)
                answer = Answer(id=ask.id, length=len(data))
            except DirectLinkError as exc:
                await write_frame(writer, Answer(id=ask.id, length=0, error=str(exc)[:200]))
                continue
            except Exception as exc:  # a bug this ask triggered: it is refused, the link goes on
                self.supervisor.drop(LOOP, type(exc).__name__, exc, f"an ask from {device[:8]} failed")
                await write_frame(writer, Answer(id=ask.id, length=0, error="internal error"))
                continue
            await write_frame(writer, answer, data)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
