"""`CoapLinks`: this device's CoAP side, for as long as its endpoint runs.

It is two things the endpoint already knows how to use:

- a `Connector`: each (re)connection is a new `CoapTransport` (the board, hellos, sealed frames);
- a `MessagePath`: mesh messages (requests, stream chunks, cancels, pings, features' messages) to a
  member that answers CoAP go in ``POST /hearth/m/<channel>`` on the message lane (`lane`), protected
  by **OSCORE** (RFC 8613, `protection`) with the keys of the same forward-secret session the envelope
  v2 would use (one EDHOC handshake keys both, RFC 9528 A.1). OSCORE *replaces* the envelope on this
  path rather than wrapping it: one AEAD, 8 bytes of timestamp and OSCORE's ~12 bytes instead of the
  envelope's 40 (README "CoAP" has the measurement).

What holds on the broker path holds here, checked in the same order: the OSCORE context is found only
for a live session whose peer is a member *now* (its index is the OSCORE key id; a revoked member's
sessions are gone), OSCORE's replay window refuses a datagram seen before, the timestamp inside must be
within the node's freshness window, the size is bounded by ``max_frame_bytes`` (block-wise only inside
OSCORE, assembled only for a peer that holds keys, at most 8 long messages per session), and the
handler checks membership again before the message layer decodes anything. A restart makes new
sessions, so nothing captured before it opens after it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Coroutine
from typing import Any

import aiocoap

from edge_agent.errors import (
    DirectLinkError,
    NotAMemberError,
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
from edge_agent.mesh.transports.coap.book import AddressBook, Endpoint, hostinfo
from edge_agent.mesh.transports.coap.lane import LaneRefused, MessageLane, Refused, Sockaddr
from edge_agent.mesh.transports.coap.protection import OscoreContext, ProtectionError
from edge_agent.mesh.transports.coap.quirks import udp_interface
from edge_agent.mesh.transports.coap.resources import MESSAGE
from edge_agent.mesh.transports.coap.transport import CoapTransport
from edge_agent.mesh.transports.coap.wire import Code

__all__ = ["CoapLinks", "context_of"]

log = logging.getLogger(__name__)

_REPLY_BYTES = 900
"""Replies one answer carries at most where the route's datagram size is not known (with OSCORE's
overhead, well within IPv6's minimum MTU); else as much as one datagram back carries."""
_REPLY_TURNS = 6
"""Loop turns a request's answer waits for replies to it (an acceptance or a pong takes 3-4)."""
_SETTLE_S = 1.0
"""How long a request under an unknown key id waits for the handshakes already received to be read."""
_TIME = 8
"""Bytes of the sender's clock (ms) before each message: freshness, as in the envelope."""
_PATH_OF = {channel: tuple(part.encode() for part in path) for channel, path in MESSAGE.items()}
_PATHS = {path: channel for channel, path in _PATH_OF.items()}


class _NoSession(ProtectionError):
    """A key id that is no session here (4.01 *Security context not found*), and why."""

    def __init__(self, reason: PeerError | None) -> None:
        super().__init__(Code.UNAUTHORIZED, "Security context not found")
        self.reason = reason


def context_of(session: Session) -> OscoreContext:
    """The OSCORE context of ``session``, made on first use and kept on it (one per session, never
    copied: its sequence number and replay window are that session's alone)."""
    context = session.coap
    if not isinstance(context, OscoreContext):
        context = session.coap = OscoreContext(session.oscore, session.peer, session.peer_run)
    return context


@functools.lru_cache(maxsize=1024)
def _sockaddr(endpoint: Endpoint) -> Sockaddr:
    """``endpoint`` as the CoAP endpoint's IPv6 socket addresses it (IPv4 as v4-mapped)."""
    host, port = endpoint
    if ":" not in host:
        return (f"::ffff:{host}", port, 0, 0)
    return tuple(socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4])


class Replies:
    """Replies to one request, packed into its answer (each a 2-byte length, then the message), at
    most one datagram of them (the answer never goes block-wise): a request's round trip carries its
    acceptance or pong, or the whole answer to it when that is short."""

    def __init__(self, limit: int = _REPLY_BYTES) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.at = time.monotonic()

    def take(self, stamped: bytes) -> bool:
        if self.size + 2 + len(stamped) > self.limit:
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
        """The open transport's aiocoap context (the lane shares its socket), None between links."""
        self.port: int | None = None
        self.lane = MessageLane(
            keys=self._context_for,
            handle=self._handle,
            max_body=node.limits.max_frame_bytes + _TIME,
            refused=self._lane_refused,
            settle=self._frames_read,
        )
        self._transport: CoapTransport | None = None
        self._backoff: dict[str, float] = {}
        self._replies: dict[tuple[str, str], Replies] = {}
        """(device, run) -> the replies to its request being handled now (`_collect`)."""

    # -- Connector ------------------------------------------------------------------------------------

    def connect(self, departure_notice: bytes | None) -> Transport:
        """A new CoAP transport (no departure notice: UDP has no last will, silence tells instead)."""
        transport = self._transport = CoapTransport(
            self.settings,
            household=self.node.household,
            device=self.node.device_id,
            book=self.book,
            max_frame=self.node.limits.max_frame_bytes,
            on_open=self._opened,
            unreachable=lambda device_id: self._backoff.get(device_id, 0.0) > time.monotonic(),
        )
        return transport

    async def _frames_read(self) -> bool:
        """The lane's wait before it refuses a key id: the session handshakes received so far are read."""
        transport = self._transport
        return transport is not None and await transport.frames_read(_SETTLE_S)

    def _opened(self, context: aiocoap.Context | None, port: int | None) -> None:
        if context is None:
            self.lane.detach()
        else:
            self.lane.attach(udp_interface(context))
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
        endpoint = self.book.endpoint(device_id)
        if self.context is None or endpoint is None:
            raise DirectLinkError(f"{device_id[:8]} is not reachable over CoAP now")
        if len(payload) + _TIME > self.node.limits.max_frame_bytes:
            raise DirectLinkError(f"a {len(payload)}-byte message is over the frame limit")
        cert = self.node.recipient(device_id)
        stamped = pack_time(int(time.time() * 1000)) + payload
        replies = self._replies.get((device_id, session)) if channel is Channel.RESPONSES else None
        if replies is not None and replies.take(stamped):
            return  # it leaves in the answer to that run's request
        try:
            current = await self.sessions.ready(cert, session)
        except (SessionError, TransportError) as exc:
            raise DirectLinkError(f"no session with {cert.name}: {exc}") from None
        budget = self.lane.budget(endpoint[0])
        try:
            answer = await self.lane.post(
                _sockaddr(endpoint),
                context_of(current),
                _PATH_OF[channel],
                stamped,
                budget=budget,
                timeout=self.settings.request_timeout_s,
            )
        except LaneRefused as exc:
            if not exc.protected and exc.diagnostic == "Security context not found":
                # The peer no longer holds that session (it restarted, or the keys expired there): the
                # next send makes a new one.
                self.sessions.table.forget(current)
            raise DirectLinkError(f"{cert.name} refused a message: {exc}") from None
        except (TimeoutError, ConnectionError, OSError, ProtectionError) as exc:
            self.give_up_on(device_id)
            raise DirectLinkError(
                f"{cert.name} at {hostinfo(endpoint)} did not answer ({str(exc) or 'timeout'})"
            ) from None
        if answer:
            self._delivered(device_id, answer)

    # -- receiving ------------------------------------------------------------------------------------

    def _context_for(self, kid: bytes) -> OscoreContext:
        """The lane's key lookup: a request's key id is our session index, its context is found only
        while that session may still receive."""
        if len(kid) != 4:
            raise _NoSession(None)
        try:
            session, _ = self.sessions.receiving(int.from_bytes(kid, "big"))
        except PeerError as exc:
            raise _NoSession(exc) from None
        return context_of(session)

    def _lane_refused(self, refusal: ProtectionError | Refused) -> None:
        """A message the lane refused for good (a key id is judged after the handshakes are read)."""
        if isinstance(refusal, _NoSession) and refusal.reason is not None:
            self._refused(refusal.reason)
        else:
            log.info("refused a CoAP message: %s", refusal)

    def _handle(
        self, context: OscoreContext, path: tuple[bytes, ...], body: bytes
    ) -> bytes | Coroutine[Any, Any, bytes]:
        """A message that opened: to the message layer; a request's answer carries the replies ready
        within a few loop turns (`_collect`)."""
        channel = _PATHS.get(path)
        if channel is None:
            raise Refused(Code.NOT_FOUND, "no such inbox")
        sender = self.received(context, channel, body)
        collecting = self._replies.get(sender)
        if channel is not Channel.REQUESTS or (collecting and time.monotonic() - collecting.at < 1.0):
            return b""  # another request from that run is collecting already
        endpoint = self.book.endpoint(sender[0])
        limit = self.lane.budget(endpoint[0]) - 16 if endpoint is not None else _REPLY_BYTES
        replies = self._replies[sender] = Replies(limit)
        return self._collect(sender, replies)

    def received(self, context: OscoreContext, channel: Channel, payload: bytes) -> tuple[str, str]:
        """One OSCORE-protected message: checked, then handed to the message layer; returns its sender
        (device, run). Raises `Refused` (the peer gets 4.xx/5.03 under the keys; nothing changes)."""
        try:
            cert = self.node.membership.member(context.peer)
        except NotAMemberError as exc:
            raise Refused(Code.FORBIDDEN, str(exc)) from None
        if len(payload) < _TIME or len(payload) > self.node.limits.max_frame_bytes:
            raise Refused(Code.BAD_REQUEST, "not a Hearth message")
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
            raise Refused(Code.BAD_REQUEST, "stale") from None
        events = self.events
        if events is None:
            raise Refused(Code.UNAVAILABLE, "not taking messages now")
        events.message(cert.device_id, channel, payload[_TIME:])
        return cert.device_id, context.run

    async def _collect(self, sender: tuple[str, str], replies: Replies) -> bytes:
        """The replies the message layer sends ``sender`` within a few loop turns of its request (an
        acceptance, a pong: ready in three or four), carried in the request's own answer instead of
        an exchange each (`Replies`; registered before the message layer saw the request)."""
        try:
            for _ in range(_REPLY_TURNS):
                await asyncio.sleep(0)
        finally:
            if self._replies.get(sender) is replies:
                del self._replies[sender]
        return replies.packed()

    def _delivered(self, device_id: str, packed: bytes) -> None:
        """The replies an answer to our request carried: each handed on as if it came on its own."""
        events = self.events
        for part in Replies.unpacked(packed, self.node.limits.max_frame_bytes):
            if events is not None and len(part) >= _TIME:
                events.message(device_id, Channel.RESPONSES, part[_TIME:])

    def _refused(self, exc: PeerError) -> None:
        self.node.dropped[type(exc).__name__] += 1
        log.warning("dropped a CoAP message: %s", exc)
