"""`CoapTransport`: the mesh transport that needs no broker (CoAP over UDP, RFC 7252).

What MQTT's broker does, CoAP peers do for each other:

- **presence board**: each device serves its own sealed advert (``GET /hearth/presence``) and, when it
  announces, says hello (``POST /hearth/hello``) to every member it knows and to All-CoAP-Nodes; whoever
  hears a hello fetches the advert from where the hello came from. Discovery (multicast, zeroconf,
  configured seeds) yields addresses to fetch from the same way. Nothing fetched is believed here: the
  node opens every advert, and only a verified one teaches the address book where a member answers.
- **inboxes**: ``POST /hearth/f/<channel>`` with one sealed frame (a handshake, or a sealed message), at
  most one block; messages between members with a session travel protected by OSCORE instead (`links`).
- **liveness**: there is no last will; a member that stops answering is reported as a vanish hint, and
  its advert ages out as on MQTT.

Every queue is bounded: the inbox (a full one answers 5.03), the presence fetches under way (and one
per source), the candidates waiting for a fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiocoap
from aiocoap import GET, POST, Message, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.message import UndecidedRemote
from aiocoap.optiontypes import BlockOption
from aiocoap.util import socknumbers

from edge_agent.errors import MalformedMessageError, PeerUnreachableError, TransportError
from edge_agent.mesh.envelope import MIN_FRAME
from edge_agent.mesh.interfaces import (
    Address,
    Announcement,
    Channel,
    Incoming,
    Received,
    Transport,
    TransportState,
    Vanished,
)
from edge_agent.mesh.sessions.wire import KIND_HANDSHAKE, HandshakeFrame, kind_of
from edge_agent.mesh.settings import CoapSettings
from edge_agent.mesh.transports.coap.asking import ask
from edge_agent.mesh.transports.coap.book import AddressBook, Endpoint, hostinfo
from edge_agent.mesh.transports.coap.discovery import ProbeError, multicast_spec, probe
from edge_agent.mesh.transports.coap.dnssd import CoapBrowser, CoapService
from edge_agent.mesh.transports.coap.resources import (
    FRAME,
    HELLO,
    MAX_PLAIN_FRAME,
    PRESENCE,
    FrameResource,
    HelloResource,
    PresenceResource,
)
from edge_agent.mesh.transports.coap.site import MemberSite, Route

__all__ = ["CoapTransport", "Tuning"]

log = logging.getLogger(__name__)

_BLOCK_EXP = 6  # 1024-byte blocks
_PUBLIC: tuple[Route, ...] = (
    (aiocoap.GET, PRESENCE),
    (aiocoap.POST, HELLO),
    (aiocoap.POST, FRAME[Channel.REQUESTS]),
    (aiocoap.POST, FRAME[Channel.RESPONSES]),
    (aiocoap.GET, (".well-known", "core")),
)


class _PipeLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiocoap 0.4.17's pipes log a late exception with ``log.error(..., exception=...)``, which a
    `logging.Logger` refuses with a TypeError (in a task nobody awaits, at shutdown or after a
    request we stopped waiting for). This keeps the line and drops the keyword."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.pop("exception", None)
        return msg, kwargs

    def getChild(self, suffix: str) -> _PipeLog:
        return _PipeLog(self.logger.getChild(suffix), {})


def _mend_pipe_logs(context: aiocoap.Context) -> None:
    for holder in (context, *context.request_interfaces):
        if isinstance(getattr(holder, "log", None), logging.Logger):
            holder.log = _PipeLog(holder.log, {})


_NOT_SENT = frozenset({errno.EPERM, errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM})
"""Errors of a send that only say this one datagram did not leave (a local firewall dropped it, a queue
was full), nothing about the peer."""


def _sends_may_fail(context: aiocoap.Context) -> None:
    """aiocoap 0.4.17 takes any error of a send as news about the remote: every exchange with that peer
    fails at once (a firewall dropping one datagram in three, `netlab.set_loss`, failed a whole answer).
    A datagram that did not leave this host is a lost datagram like any other: retransmission (and the
    request timeout) deals with it. Errors that are about the way (no route, link down) still fail
    the peer's exchanges at once."""
    for holder in context.request_interfaces:
        messages: Any = getattr(getattr(holder, "token_interface", None), "message_interface", None)
        received = getattr(messages, "error_received", None)
        if messages is None or received is None:
            continue

        def error_received(exc: Exception, received: Callable[[Exception], None] = received) -> None:
            if isinstance(exc, OSError) and exc.errno in _NOT_SENT:
                log.debug("a CoAP datagram was not sent (%s); it counts as lost", exc)
                return
            received(exc)

        messages.error_received = error_received


def _handshake_sender(frame: bytes) -> str | None:
    """Who a session handshake frame claims to come from (None: not one); a claim, checked by the node."""
    if kind_of(frame) != KIND_HANDSHAKE:
        return None
    try:
        return HandshakeFrame.parse(frame).sender
    except MalformedMessageError:
        return None


def _tag(name: str) -> str:
    """A non-secret tag for mDNS (the household's, or a device's): anyone on the LAN sees it, so it is a
    hash, not the id; the same household gives the same tag."""
    return hashlib.sha256(f"hearth-coap/{name}".encode()).hexdigest()[:16]


def _free_port(bind: str) -> int:
    """A UDP port free on ``bind`` now (for a one-shot client's port 0: aiocoap does not say which port
    the system picked, and the presence must name it)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((bind, 0))
        return int(probe.getsockname()[1])


class Tuning(aiocoap.numbers.TransportTuning):  # type: ignore[misc]
    """Retransmission for a home LAN: the first retry after ~0.5 s, not RFC 7252's 2-3 s (the mesh's
    stall timeout is a few seconds: a lost datagram must be resent well within it)."""

    ACK_TIMEOUT = 0.5
    MAX_RETRANSMIT = 4


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Put in the inbox by `caught_up`: set when the reader got this far."""

    reached: asyncio.Future[None]


class CoapTransport(Transport):
    """One CoAP endpoint of this device: serves its board and inboxes, sends frames and hellos."""

    def __init__(
        self,
        settings: CoapSettings,
        *,
        household: str,
        device: str,
        book: AddressBook,
        max_frame: int,
        routes: Iterable[tuple[tuple[str, ...], resource.Resource]] = (),
        credentials: CredentialsMap | None = None,
        on_open: Callable[[aiocoap.Context | None, int | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.household = household
        self.device = device
        self.book = book
        self.max_frame = max_frame
        self.routes = list(routes)
        self.credentials = credentials if credentials is not None else CredentialsMap()
        self.on_open = on_open
        self.state = TransportState.UNOPENED
        self.context: aiocoap.Context | None = None
        self.port: int | None = None
        """The UDP port served (the configured one, or a free one when that is 0)."""
        self.dropped: Counter[str] = Counter()
        self._inbox: asyncio.Queue[Incoming | _Barrier | None] = asyncio.Queue(settings.max_inbox)
        self._presence = PresenceResource()
        self._fetching: set[Endpoint] = set()
        self._fetched_at: dict[Endpoint, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._discovered = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.state is not TransportState.UNOPENED:
            raise TransportError(f"this CoAP transport is {self.state.value}; make a new one")
        site = resource.Site()
        site.add_resource(PRESENCE, self._presence)
        site.add_resource(HELLO, HelloResource(self._hello_from))
        for channel, route in FRAME.items():
            site.add_resource(route, FrameResource(channel, self._frame))
        for path, res in self.routes:
            site.add_resource(path, res)
        site.add_resource(
            (".well-known", "core"), resource.WKCResource(site.get_resources_as_linkheader, impl_info=None)
        )
        # aiocoap sets SO_REUSEPORT unless told not to: two agents on one port would then split the
        # datagrams between them, where a clear "address in use" is wanted.
        os.environ["AIOCOAP_REUSE_PORT"] = "0"
        # aiocoap reads ICMP errors from the socket's error queue (IP_RECVERR). Under uvloop the first
        # such error (a datagram to a port nobody listens on) stops the socket's reader for good:
        # libuv reports the pending error as a failed poll. So the queue stays off, on every loop
        # alike, and a silent peer is found by timeouts, as a lost one is anyway.
        socknumbers.HAS_RECVERR = False
        self.port = self.settings.port or _free_port(self.settings.bind)
        try:
            self.context = await aiocoap.Context.create_server_context(
                MemberSite(site, self.credentials, _PUBLIC),
                bind=(self.settings.bind, self.port),
                transports=["oscore", "udp6"],
                multicast=multicast_spec(self.settings.multicast_interfaces),
            )
        except OSError as exc:
            self.state = TransportState.CLOSED
            raise TransportError(
                f"cannot serve CoAP on {hostinfo((self.settings.bind, self.port))}: {exc}"
            ) from exc
        _mend_pipe_logs(self.context)
        _sends_may_fail(self.context)
        self.state = TransportState.OPEN
        if self.on_open is not None:
            self.on_open(self.context, self.port)
        self._spawn(self._discover())

    async def aclose(self) -> None:
        if self.state is TransportState.CLOSED:
            return
        was_open = self.state is TransportState.OPEN
        self.state = TransportState.CLOSED
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.on_open is not None and was_open:
            self.on_open(None, None)
        context, self.context = self.context, None
        if context is not None:
            await context.shutdown()
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(None)

    def abort(self) -> None:
        """No last will to fire: peers find out by the silence (vanish hints, adverts ageing)."""
        self._spawn_detached(self.aclose())

    # -- sending --------------------------------------------------------------------------------------

    def _live(self) -> aiocoap.Context:
        if self.state is not TransportState.OPEN or self.context is None:
            raise TransportError("the CoAP transport is not open")
        return self.context

    async def send(self, address: Address, frame: bytes) -> None:
        context = self._live()
        endpoint = self.book.endpoint(address.device)
        if endpoint is None:
            # Its presence may be on its way (fetched after its hello or its first frame): wait briefly.
            endpoint = await self.book.wait_for(address.device, self.settings.hello_timeout_s)
        if endpoint is None:
            raise PeerUnreachableError(f"{address.device[:8]} announces no CoAP contact")
        if address.channel not in FRAME:
            raise TransportError(f"no CoAP inbox for the {address.channel.value} channel")
        if len(frame) > MAX_PLAIN_FRAME:
            raise TransportError(
                f"a {len(frame)}-byte frame is too large to send without OSCORE (at most {MAX_PLAIN_FRAME})"
            )
        request = Message(code=POST, payload=frame, transport_tuning=Tuning())
        request.remote = UndecidedRemote("coap", hostinfo(endpoint))
        request.opt.uri_path = FRAME[address.channel]
        try:
            response = await ask(context, request, timeout=self.settings.request_timeout_s)
        except (TimeoutError, aiocoap.error.NetworkError) as exc:
            self._vanished(address.device)
            raise PeerUnreachableError(
                f"{address.device[:8]} at {hostinfo(endpoint)} did not answer ({str(exc) or 'timeout'})"
            ) from None
        if not response.code.is_successful():
            raise TransportError(
                f"{address.device[:8]} refused a frame: {response.code} {response.payload[:80]!r}"
            )

    async def announce(self, frame: bytes) -> None:
        """Serve ``frame`` as this device's board and say hello to every member known here and to the
        multicast groups (in the background: a hello is a hint, and a silent peer must not hold the
        announcement up)."""
        context = self._live()
        self._presence.frame = frame
        for endpoint in self.book.all():
            self._spawn(self._hello(context, endpoint, reliable=True))
        for group in self.settings.hello_groups():
            self._spawn(self._hello(context, group, reliable=False))

    async def _hello(self, context: aiocoap.Context, endpoint: Endpoint, *, reliable: bool) -> None:
        request = Message(code=POST, transport_tuning=Tuning() if reliable else aiocoap.numbers.Unreliable())
        request.remote = UndecidedRemote("coap", hostinfo(endpoint))
        request.opt.uri_path = HELLO
        if not reliable:
            request.opt.no_response = 26  # RFC 7967: a group hello wants no answers
        with contextlib.suppress(TimeoutError, aiocoap.error.Error, OSError):
            await ask(context, request, timeout=self.settings.hello_timeout_s)

    # -- receiving ------------------------------------------------------------------------------------

    async def incoming(self) -> AsyncIterator[Incoming]:
        while True:
            item = await self._inbox.get()
            if item is None:
                self._inbox.put_nowait(None)  # later readers end too
                raise TransportError("the CoAP transport closed")
            if isinstance(item, _Barrier):
                if not item.reached.done():
                    item.reached.set_result(None)
                continue
            yield item

    async def caught_up(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._discovered.wait()
        except TimeoutError:
            return False
        if self.state is not TransportState.OPEN:
            return False
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await self._inbox.put(_Barrier(reached))
            async with asyncio.timeout(max(0.0, end - time.monotonic())):
                await reached
        except TimeoutError:
            return False
        return True

    def _put(self, item: Incoming) -> bool:
        try:
            self._inbox.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped["InboxFull"] += 1
            return False
        return True

    def _frame(self, channel: Channel, frame: bytes, source: Endpoint | None) -> bool:
        # Not a byte of it is parsed here: the node verifies it (v1 envelope or v2 session frame).
        item = Received(Address(self.household, self.device, channel), frame)
        if source is not None and (asker := _handshake_sender(frame)) is not None and asker not in self.book:
            # A handshake from a member not heard of yet (its hello may still be on the way): the reader
            # answers it before it reads on, so that member's presence goes in first, fetched now from
            # where the frame came from (bounded as for a hello), or the answer would have nowhere to go.
            fetch = self._heard(source)
            if fetch is not None:
                if self._inbox.full():
                    self.dropped["InboxFull"] += 1
                    return False
                self._spawn(self._after(fetch, item))
                return True
        return self._put(item)

    async def _after(self, fetch: asyncio.Task[None], item: Incoming) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(fetch)
        self._put(item)

    def _vanished(self, device: str) -> None:
        self._put(Vanished(device))

    # -- presence fetches -----------------------------------------------------------------------------

    def _hello_from(self, source: Endpoint) -> None:
        self._heard(source)

    def _heard(self, source: Endpoint) -> asyncio.Task[None] | None:
        """A hello from ``source``: fetch its presence, unless one fetch from there is under way, it was
        fetched very lately, or too many are under way (a flood of hellos costs one fetch each at most).
        Returns the fetch, if one started."""
        if self.state is not TransportState.OPEN:
            return None
        now = time.monotonic()
        if (
            source in self._fetching
            or now - self._fetched_at.get(source, -1e9) < self.settings.min_fetch_interval_s
            or len(self._fetching) >= self.settings.max_fetches
        ):
            self.dropped["HelloIgnored"] += 1
            return None
        if len(self._fetched_at) >= 4 * self.settings.max_fetches:
            cutoff = now - self.settings.min_fetch_interval_s
            self._fetched_at = {k: t for k, t in self._fetched_at.items() if t >= cutoff}
        self._fetched_at[source] = now
        self._fetching.add(source)
        return self._spawn(self._fetch_presence(source))

    async def _fetch_presence(self, source: Endpoint) -> None:
        try:
            frame = await self.fetch(source, PRESENCE)
        except (TransportError, TimeoutError) as exc:
            log.debug("no presence from %s: %s", hostinfo(source), exc)
            return
        finally:
            self._fetching.discard(source)
        if len(frame) < MIN_FRAME:
            self.dropped["ShortFrame"] += 1
            return
        # The board it claims (the sender id in the envelope's header); the node checks it is so. A
        # fetched board is what MQTT calls retained: fetched again unchanged, it is no replay attack.
        self._put(Announcement(frame[4:20].hex(), frame, retained=True))

    async def fetch(self, endpoint: Endpoint, path: tuple[str, ...]) -> bytes:
        """GET ``path`` from ``endpoint`` block by block, stopping past ``max_frame`` bytes (aiocoap's own
        block-wise client would assemble whatever a peer keeps sending). Raises TransportError."""
        context = self._live()
        body = bytearray()
        number = 0
        end = time.monotonic() + self.settings.fetch_timeout_s
        while True:
            request = Message(code=GET, transport_tuning=Tuning())
            request.remote = UndecidedRemote("coap", hostinfo(endpoint))
            request.opt.uri_path = path
            request.opt.block2 = BlockOption.BlockwiseTuple(number, False, _BLOCK_EXP)
            try:
                response = await ask(context, request, timeout=max(0.0, end - time.monotonic()))
            except aiocoap.error.Error as exc:
                raise TransportError(f"{hostinfo(endpoint)}: {exc}") from None
            if not response.code.is_successful():
                raise TransportError(f"{hostinfo(endpoint)} answered {response.code}")
            block = response.opt.block2
            if block is not None and block.block_number != number:
                raise TransportError(f"{hostinfo(endpoint)} sent block {block.block_number}, not {number}")
            body += response.payload
            if len(body) > self.max_frame:
                raise TransportError(f"{hostinfo(endpoint)} sent more than {self.max_frame} bytes")
            if block is None or not block.more:
                return bytes(body)
            number += 1

    async def _discover(self) -> None:
        """Discovery rounds, for as long as the transport is open: seeds, a multicast probe on each
        joined interface, the mDNS browser's candidates; each new address gets a presence fetch. The
        first round's adverts are what `caught_up` waits for."""
        async with contextlib.AsyncExitStack() as stack:
            browser = await stack.enter_async_context(self._browser()) if self.settings.zeroconf else None
            if browser is not None:
                await stack.enter_async_context(self._service())
            first = True
            while self.state is TransportState.OPEN:
                try:
                    found = list(self.settings.seeds)
                    probes = [
                        probe(self.settings.peer_port, timeout=self.settings.probe_s, interface=iface)
                        for iface in self.settings.multicast_interfaces
                    ]
                    for result in await asyncio.gather(*probes, return_exceptions=True):
                        if isinstance(result, ProbeError):
                            log.info("multicast discovery: %s", result)
                        elif isinstance(result, list):
                            found.extend(result)
                    if browser is not None:
                        found.extend(browser.candidates())
                    fetches = [self._heard(e) for e in dict.fromkeys(found) if e != self._own()]
                    await asyncio.gather(*(f for f in fetches if f is not None), return_exceptions=True)
                finally:
                    if first:
                        self._discovered.set()
                        first = False
                if browser is not None:
                    if await browser.changed(self.settings.rediscover_s):
                        continue
                else:
                    await asyncio.sleep(self.settings.rediscover_s)

    def _own(self) -> Endpoint | None:
        return (self.settings.bind, self.port) if self.port is not None else None

    def _browser(self) -> CoapBrowser:
        return CoapBrowser(_tag(self.household), limit=self.settings.max_fetches * 8)

    def _service(self) -> CoapService:
        assert self.port is not None
        return CoapService(
            tag=_tag(self.device)[:12],
            household_tag=_tag(self.household),
            addresses=self.settings.advertise or [self.settings.bind],
            port=self.port,
        )

    # -- tasks ----------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_detached(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        _detached.add(task)
        task.add_done_callback(_detached.discard)


_detached: set[asyncio.Task[None]] = set()
