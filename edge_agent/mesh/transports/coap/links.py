"""`CoapLinks`: this device's CoAP side, for as long as its endpoint runs.

It is two things the endpoint already knows how to use:

- a `Connector`: each (re)connection is a new `CoapTransport` (the board, hellos, sealed frames);
- a `MessagePath`: mesh messages (requests, stream chunks, cancels, pings, features' messages) to a
  member that answers CoAP go in ``POST /hearth/m/<channel>``, protected by **OSCORE** (RFC 8613) with
  the keys of the same forward-secret session the envelope v2 would use (one EDHOC handshake keys both,
  RFC 9528 A.1). OSCORE *replaces* the envelope on this path rather than wrapping it: one AEAD, 8 bytes
  of timestamp and OSCORE's ~12 bytes instead of the envelope's 40 (README "CoAP" has the measurement).

What holds on the broker path holds here, checked in the same order: the OSCORE context is found only
for a live session whose peer is a member *now* (its index is the OSCORE key id; a revoked member's
sessions are gone), OSCORE's replay window refuses a datagram seen before, the timestamp inside must be
within the node's freshness window, the size is bounded by ``max_frame_bytes`` (block-wise only inside
OSCORE, assembled only for a peer that holds keys), and the resource checks membership again before
the message layer decodes anything. A restart makes new sessions, so nothing captured before it opens
after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
from aiocoap import CHANGED, POST, Message, error, oscore, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.message import UndecidedRemote
from aiocoap.transports.oscore import OSCOREAddress

from edge_agent.errors import (
    DirectLinkError,
    PeerError,
    ReplayError,
    SessionError,
    TransportError,
)
from edge_agent.mesh.envelope import KIND_DIRECT, Opened, PathHeader, check_fresh
from edge_agent.mesh.interfaces import Channel, Connector, PathEvents, Transport
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import CoapContact, DirectContact, Presence
from edge_agent.mesh.sessions import Sessions
from edge_agent.mesh.sessions.table import Session
from edge_agent.mesh.sessions.wire import pack_time, unpack_time
from edge_agent.mesh.settings import CoapSettings
from edge_agent.mesh.transports.coap.asking import ask
from edge_agent.mesh.transports.coap.book import AddressBook, hostinfo
from edge_agent.mesh.transports.coap.oscore import MemoryContext
from edge_agent.mesh.transports.coap.quirks import Tuning
from edge_agent.mesh.transports.coap.resources import MESSAGE
from edge_agent.mesh.transports.coap.site import member_of
from edge_agent.mesh.transports.coap.transport import CoapTransport

__all__ = ["CoapLinks", "SessionContexts", "context_of"]

log = logging.getLogger(__name__)

_BLOCK = 1024
"""Payload bytes in one block (SZX 6): a longer message goes block-wise."""
_MAX_ASSEMBLIES = 8
"""Long messages one session may have under assembly here at once."""
_ASSEMBLY_S = 30.0
"""A long message with no block for this long no longer counts against its session."""
_REPLY_BYTES = 900
"""Replies one response carries at most (with OSCORE's overhead, one block)."""
_REPLY_TURNS = 6
"""Loop turns a request's response waits for replies to it (an acceptance or a pong takes 3-4)."""
_TIME = 8
"""Bytes of the sender's clock (ms) before each message: freshness, as in the envelope."""


def context_of(session: Session) -> MemoryContext:
    """The OSCORE context of ``session``, made on first use and kept on it (one per session, never
    copied: its sequence number and replay window are that session's alone)."""
    context = session.coap
    if not isinstance(context, MemoryContext):
        context = session.coap = MemoryContext(session.oscore, session.peer, session.peer_run)
    return context


class SessionContexts:
    """The one entry of the server's OSCORE credentials: a request's key id is our session index, so
    its context is found in the session table, and only while that session may still receive."""

    def __init__(self, sessions: Sessions, refused: Callable[[PeerError], None]) -> None:
        self.sessions = sessions
        self.refused = refused

    def get_oscore_context_for(self, unprotected: dict[Any, Any]) -> MemoryContext | None:
        kid = unprotected.get(oscore.COSE_KID)
        if (
            not isinstance(kid, bytes)
            or len(kid) != 4
            or unprotected.get(oscore.COSE_KID_CONTEXT) is not None
        ):
            return None
        try:
            session, _ = self.sessions.receiving(int.from_bytes(kid, "big"))
        except PeerError as exc:
            self.refused(exc)
            return None
        return context_of(session)


class Replies:
    """Replies to one request, packed into its response (each a 2-byte length, then the message), at
    most one block of them: a request's round trip carries its acceptance or pong, and the response
    never goes block-wise."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def take(self, stamped: bytes) -> bool:
        if self.size + 2 + len(stamped) > _REPLY_BYTES:
            return False
        self.parts.append(stamped)
        self.size += 2 + len(stamped)
        return True

    def packed(self) -> bytes:
        return b"".join(len(p).to_bytes(2, "big") + p for p in self.parts)

    @staticmethod
    def unpacked(packed: bytes, limit: int) -> list[bytes]:
        """The parts of ``packed`` (what does not parse is dropped: it came under the session's keys,
        so only a bug makes it so)."""
        parts: list[bytes] = []
        at = 0
        while at + 2 <= len(packed) and len(parts) < 64:
            size = int.from_bytes(packed[at : at + 2], "big")
            if size > limit or at + 2 + size > len(packed):
                break
            parts.append(packed[at + 2 : at + 2 + size])
            at += 2 + size
        return parts


class _MessageResource(resource.Resource):  # type: ignore[misc]
    def __init__(self, links: CoapLinks, channel: Channel) -> None:
        super().__init__()
        self.links = links
        self.channel = channel

    async def render_to_pipe(self, pipe: Any) -> None:
        # Block-wise bodies are assembled before `render_post` sees them (only for a peer that holds
        # session keys: each block passed OSCORE): past the frame limit, the next block is refused,
        # and a peer has at most `_MAX_ASSEMBLIES` under way (one per Request-Tag).
        request = pipe.request
        block1 = request.opt.block1
        if block1 is not None:
            limit = self.links.node.limits.max_frame_bytes + _TIME
            if block1.start + len(request.payload) > limit:
                raise error.RequestEntityTooLarge(f"a message is at most {limit} bytes")
            if not self.links.assembling(request, last=not block1.more):
                raise error.ServiceUnavailable(f"at most {_MAX_ASSEMBLIES} long messages at once")
        await super().render_to_pipe(pipe)

    async def render_post(self, request: Message) -> Message:
        sender = self.links.received(request, self.channel)
        if self.channel is not Channel.REQUESTS:
            return Message(code=CHANGED)
        return Message(code=CHANGED, payload=await self.links.replies_to(sender))


class CoapLinks(Connector):
    """The CoAP transport's connector and its OSCORE message path (``name`` "coap")."""

    name = "coap"

    def __init__(self, node: MeshNode, settings: CoapSettings) -> None:
        if node.sessions is None:
            raise ValueError(
                "the CoAP transport needs forward-secret sessions ([mesh.limits.sessions] enabled)"
            )
        self.node = node
        self.sessions: Sessions = node.sessions
        self.settings = settings
        self.book = AddressBook(settings.max_devices)
        self.events: PathEvents | None = None
        self.context: aiocoap.Context | None = None
        """The open transport's aiocoap context (messages leave from its socket), None between links."""
        self.port: int | None = None
        self.credentials = CredentialsMap()
        self.credentials[":hearth-sessions"] = SessionContexts(self.sessions, self._refused)
        self._backoff: dict[str, float] = {}
        self._long: dict[str, asyncio.Semaphore] = {}
        """Per member with long messages on their way to it, how many more may leave at once."""
        self._long_busy: Counter[str] = Counter()
        self._replies: dict[tuple[str, str], Replies] = {}
        """(device, run) -> the replies to its request being handled now (`replies_to`)."""
        self._assemblies: dict[tuple[int, tuple[bytes, ...]], float] = {}
        """Long messages being assembled: (session context, Request-Tag) -> last block's time."""

    # -- Connector ------------------------------------------------------------------------------------

    def connect(self, departure_notice: bytes | None) -> Transport:
        """A new CoAP transport (no departure notice: UDP has no last will, silence tells instead)."""
        return CoapTransport(
            self.settings,
            household=self.node.household,
            device=self.node.device_id,
            book=self.book,
            max_frame=self.node.limits.max_frame_bytes,
            routes=[(MESSAGE[channel], _MessageResource(self, channel)) for channel in MESSAGE],
            credentials=self.credentials,
            on_open=self._opened,
            unreachable=lambda device_id: self._backoff.get(device_id, 0.0) > time.monotonic(),
        )

    def _opened(self, context: aiocoap.Context | None, port: int | None) -> None:
        self.context, self.port = context, port

    # -- presence -------------------------------------------------------------------------------------

    def contact(self) -> CoapContact | None:
        """What this device's presence says about CoAP (None until the transport is bound)."""
        if self.port is None:
            return None
        hosts = self.settings.advertise or [self.settings.bind]
        return CoapContact(hosts=hosts, port=self.port)

    def heard(self, opened: Opened) -> None:
        """A verified advert (a presence hook): where its device answers CoAP now, or that it no
        longer does."""
        sender = opened.header.sender
        if sender != self.node.device_id:
            self.book.learn(sender, Presence.model_validate_json(opened.payload).coap)

    # -- MessagePath ----------------------------------------------------------------------------------

    def carries(self, device_id: str, contact: DirectContact | None) -> bool:
        return (
            self.context is not None
            and device_id in self.book
            and device_id in self.sessions.speakers
            and self._backoff.get(device_id, 0.0) <= time.monotonic()
        )

    def carry(self, events: PathEvents | None) -> None:
        self.events = events

    def give_up_on(self, device_id: str) -> None:
        self._backoff[device_id] = time.monotonic() + self.settings.request_timeout_s
        if len(self._backoff) > self.settings.max_devices:
            now = time.monotonic()
            self._backoff = {d: t for d, t in self._backoff.items() if t > now}

    async def send_message(
        self,
        device_id: str,
        contact: DirectContact | None,
        channel: Channel,
        payload: bytes,
        *,
        session: str = "",
    ) -> None:
        context, endpoint = self.context, self.book.endpoint(device_id)
        if context is None or endpoint is None:
            raise DirectLinkError(f"{device_id[:8]} is not reachable over CoAP now")
        if len(payload) + _TIME > self.node.limits.max_frame_bytes:
            raise DirectLinkError(f"a {len(payload)}-byte message is over the frame limit")
        cert = self.node.recipient(device_id)
        stamped = pack_time(int(time.time() * 1000)) + payload
        replies = self._replies.get((device_id, session)) if channel is Channel.RESPONSES else None
        if replies is not None and replies.take(stamped):
            return  # it leaves in the response to that run's request
        try:
            current = await self.sessions.ready(cert, session)
        except (SessionError, TransportError) as exc:
            raise DirectLinkError(f"no session with {cert.name}: {exc}") from None
        request = Message(code=POST, payload=stamped, transport_tuning=Tuning())
        request.remote = OSCOREAddress(context_of(current), UndecidedRemote("coap", hostinfo(endpoint)))
        request.opt.uri_path = MESSAGE[channel]
        long = len(request.payload) > _BLOCK
        if long:
            # Block-wise: the peer assembles blocks by everything but the block option, so two long
            # messages at once to one peer would be mixed into one; a Request-Tag (RFC 9175) per
            # message keeps them apart (inside OSCORE, like the path). The peer holds at most
            # `_MAX_ASSEMBLIES` of them per session: no more leave at once.
            request.opt.request_tag = (secrets.token_bytes(4),)
        async with self._long_slot(device_id) if long else contextlib.nullcontext():
            try:
                response = await ask(
                    context, request, timeout=self.settings.request_timeout_s, blockwise=True
                )
            except oscore.NotAProtectedMessage as exc:
                # The peer no longer holds that session (it restarted, or the keys expired there): the
                # next send makes a new one.
                self.sessions.table.forget(current)
                raise DirectLinkError(f"{cert.name} refused the session: {exc.plain_message.code}") from None
            except (TimeoutError, aiocoap.error.Error, OSError) as exc:
                self.give_up_on(device_id)
                raise DirectLinkError(
                    f"{cert.name} at {hostinfo(endpoint)} did not answer ({str(exc) or 'timeout'})"
                ) from None
        if not response.code.is_successful():
            raise DirectLinkError(f"{cert.name} refused a message: {response.code}")
        if response.payload:
            self._delivered(device_id, bytes(response.payload))

    # -- receiving ------------------------------------------------------------------------------------

    def received(self, request: Message, channel: Channel) -> tuple[str, str]:
        """One OSCORE-protected message: checked, then handed to the message layer; returns its sender
        (device, run). Raises aiocoap's renderable errors (the peer gets 4.xx/5.03; nothing changes)."""
        cert = member_of(request, self.node.membership)  # 4.01 / 4.03
        context = request.remote.security_context
        payload = bytes(request.payload)
        if len(payload) < _TIME or len(payload) > self.node.limits.max_frame_bytes:
            raise error.BadRequest("not a Hearth message")
        header = PathHeader(
            version=2,
            kind=KIND_DIRECT,
            sender=cert.device_id,
            recipient=self.node.device_id,
            counter=1,
            timestamp_ms=unpack_time(payload),
            epoch=0,
            topic=MESSAGE[channel][-1],
        )
        try:
            check_fresh(header, self.node.opener.max_skew_ms)
        except ReplayError as exc:
            self._refused(exc)
            raise error.BadRequest("stale") from None
        events = self.events
        if events is None:
            raise error.ServiceUnavailable("not taking messages now")
        events.message(cert.device_id, channel, payload[_TIME:])
        return cert.device_id, context.run

    async def replies_to(self, sender: tuple[str, str]) -> bytes:
        """The replies the message layer sends ``sender`` within a few loop turns of its request (an
        acceptance, a pong: ready in three or four), carried in the request's own response instead of
        an exchange each (`Replies`)."""
        if sender in self._replies:  # another request from that run is collecting already
            return b""
        replies = self._replies[sender] = Replies()
        try:
            for _ in range(_REPLY_TURNS):
                await asyncio.sleep(0)
        finally:
            del self._replies[sender]
        return replies.packed()

    def _delivered(self, device_id: str, packed: bytes) -> None:
        """The replies a response to our request carried: each handed on as if it came on its own."""
        events = self.events
        for part in Replies.unpacked(packed, self.node.limits.max_frame_bytes):
            if events is not None and len(part) >= _TIME:
                events.message(device_id, Channel.RESPONSES, part[_TIME:])

    @contextlib.asynccontextmanager
    async def _long_slot(self, device_id: str) -> AsyncIterator[None]:
        """One of the `_MAX_ASSEMBLIES` long messages that may be on their way to a member at once."""
        slots = self._long.setdefault(device_id, asyncio.Semaphore(_MAX_ASSEMBLIES))
        self._long_busy[device_id] += 1
        try:
            async with slots:
                yield
        finally:
            self._long_busy[device_id] -= 1
            if self._long_busy[device_id] <= 0:  # nothing long on its way to it: forget its slots
                del self._long_busy[device_id]
                self._long.pop(device_id, None)

    def assembling(self, request: Message, *, last: bool) -> bool:
        """Count a block of a long message from the request's session; False when that session has
        `_MAX_ASSEMBLIES` others under way (each is held until its last block or `_ASSEMBLY_S`)."""
        remote = request.remote
        context = remote.security_context if isinstance(remote, OSCOREAddress) else None
        key = (id(context), tuple(request.opt.request_tag))
        now = time.monotonic()
        if len(self._assemblies) > 4 * _MAX_ASSEMBLIES:
            self._assemblies = {k: t for k, t in self._assemblies.items() if now - t < _ASSEMBLY_S}
        if key not in self._assemblies:
            live = sum(1 for (c, _), t in self._assemblies.items() if c == key[0] and now - t < _ASSEMBLY_S)
            if live >= _MAX_ASSEMBLIES:
                return False
        if last:
            self._assemblies.pop(key, None)
        else:
            self._assemblies[key] = now
        return True

    def _refused(self, exc: PeerError) -> None:
        self.node.dropped[type(exc).__name__] += 1
        log.warning("dropped a CoAP message: %s", exc)
