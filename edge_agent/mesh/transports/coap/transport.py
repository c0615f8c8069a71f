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
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiocoap
from aiocoap import POST, Message, resource
from aiocoap.message import UndecidedRemote

from edge_agent.errors import MalformedMessageError, PeerUnreachableError, TransportError
from edge_agent.mesh.interfaces import (
    Address,
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
from edge_agent.mesh.transports.coap.board import BoardFetches
from edge_agent.mesh.transports.coap.book import AddressBook, Endpoint, hostinfo
from edge_agent.mesh.transports.coap.discovery import ProbeError, group_hello, multicast_spec
from edge_agent.mesh.transports.coap.finding import discovery_rounds
from edge_agent.mesh.transports.coap.quirks import Tuning, free_port, server_context, shutdown
from edge_agent.mesh.transports.coap.resources import (
    FRAME,
    HELLO,
    MAX_PLAIN_FRAME,
    PRESENCE,
    FrameResource,
    HelloResource,
    PresenceResource,
)
from edge_agent.mesh.transports.coap.site import PublicSite, Route

__all__ = ["CoapTransport"]

log = logging.getLogger(__name__)

_PUBLIC: tuple[Route, ...] = (
    (aiocoap.GET, PRESENCE),
    (aiocoap.POST, HELLO),
    (aiocoap.POST, FRAME[Channel.REQUESTS]),
    (aiocoap.POST, FRAME[Channel.RESPONSES]),
    (aiocoap.GET, (".well-known", "core")),
)


def _handshake_sender(frame: bytes) -> str | None:
    """Who a session handshake frame claims to come from (None: not one); a claim, checked by the node."""
    if kind_of(frame) != KIND_HANDSHAKE:
        return None
    try:
        return HandshakeFrame.parse(frame).sender
    except MalformedMessageError:
        return None


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
        on_open: Callable[[aiocoap.Context | None, int | None], None] | None = None,
        unreachable: Callable[[str], bool] = lambda device_id: False,
    ) -> None:
        self.settings = settings
        self.household = household
        self.device = device
        self.book = book
        self.max_frame = max_frame
        self.on_open = on_open
        self.unreachable = unreachable
        """Whether the message path just gave up on a member (its stream went silent): frames to it
        fail at once, so the request fails over instead of waiting on the same silent address."""
        self.state = TransportState.UNOPENED
        self.context: aiocoap.Context | None = None
        self.port: int | None = None
        """The UDP port served (the configured one, or a free one when that is 0)."""
        self.dropped: Counter[str] = Counter()
        self._inbox: asyncio.Queue[Incoming | _Barrier | None] = asyncio.Queue(settings.max_inbox)
        self._presence = PresenceResource()
        self._tasks: set[asyncio.Task[None]] = set()
        self._discovered = asyncio.Event()
        self.boards = BoardFetches(settings, self._live, max_frame, self._put, self._spawn, self.dropped)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.state is not TransportState.UNOPENED:
            raise TransportError(f"this CoAP transport is {self.state.value}; make a new one")
        site = resource.Site()
        site.add_resource(PRESENCE, self._presence)
        site.add_resource(HELLO, HelloResource(self._hello_from))
        for channel, route in FRAME.items():
            site.add_resource(route, FrameResource(channel, self._frame))
        site.add_resource(
            (".well-known", "core"), resource.WKCResource(site.get_resources_as_linkheader, impl_info=None)
        )
        self.port = self.settings.port or free_port(self.settings.bind)
        try:
            self.context = await server_context(
                PublicSite(site, _PUBLIC),
                (self.settings.bind, self.port),
                multicast_spec(self.settings.multicast_interfaces),
            )
        except OSError as exc:
            self.state = TransportState.CLOSED
            raise TransportError(
                f"cannot serve CoAP on {hostinfo((self.settings.bind, self.port))}: {exc}"
            ) from exc
        if self.on_open is not None:
            try:
                self.on_open(self.context, self.port)
            except Exception:
                await shutdown(self.context)
                self.context, self.state = None, TransportState.CLOSED
                raise
        self.state = TransportState.OPEN
        self._spawn(
            discovery_rounds(
                self.settings,
                household=self.household,
                device=self.device,
                port=self.port,
                fetch=self.boards.heard,
                first_done=self._discovered,
                live=lambda: self.state is TransportState.OPEN,
            )
        )

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
            await shutdown(context)
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
        if self.unreachable(address.device):
            raise PeerUnreachableError(f"{address.device[:8]} went silent on CoAP lately")
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
            self._spawn(self._hello(context, endpoint))
        for interface in self.settings.multicast_interfaces:
            try:
                group_hello(
                    self.settings.peer_port, self.port or self.settings.peer_port, interface=interface
                )
            except ProbeError as exc:
                log.debug("no group hello: %s", exc)

    async def _hello(self, context: aiocoap.Context, endpoint: Endpoint) -> None:
        request = Message(code=POST, transport_tuning=Tuning())
        request.remote = UndecidedRemote("coap", hostinfo(endpoint))
        request.opt.uri_path = HELLO
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
        return await self.frames_read(max(0.0, end - time.monotonic()))

    async def frames_read(self, timeout: float) -> bool:
        """Whether the reader got past every frame received so far within ``timeout`` s (a session
        handshake's last message among them: the message lane waits on it before it refuses a key id)."""
        if self.state is not TransportState.OPEN:
            return False
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._inbox.put(_Barrier(reached))
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
            fetch = self.boards.heard(source) if self.state is TransportState.OPEN else None
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

    def _hello_from(self, source: Endpoint) -> None:
        if self.state is TransportState.OPEN:
            self.boards.heard(source)

    # -- tasks ----------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_detached(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        _detached.add(task)
        task.add_done_callback(_detached.discard)


_detached: set[asyncio.Task[None]] = set()
