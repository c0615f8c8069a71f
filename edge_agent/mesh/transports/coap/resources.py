"""The CoAP resources a Hearth device serves, and the paths peers reach them on.

Public (unprotected, each carrying its own proof or asking for nothing):

- ``GET /hearth/presence``: this device's current signed, group-sealed advert (or departure notice), the
  CoAP counterpart of its retained MQTT presence; answered block-wise (RFC 7959) when longer than a block.
- ``POST /hearth/hello``: "I have a new advert, fetch it": the poster's presence is then fetched from the
  address the hello came from (bounded, see `transport`), and believed only once the node has opened it.
- ``POST /hearth/f/req`` and ``/hearth/f/resp``: one sealed Hearth frame for an inbox (a session
  handshake, or a sealed message when no OSCORE session carries it), at most one block: never block-wise
  without OSCORE, so a stranger cannot make this device buffer a reassembly.

Protected by OSCORE (keys from a session handshake, `paths`): ``POST /hearth/m/req`` and ``/hearth/m/resp``,
one mesh message each.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from aiocoap import CHANGED, CONTENT, Message, error, resource

from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.transports.coap.book import Endpoint

__all__ = [
    "FRAME",
    "HELLO",
    "MAX_PLAIN_FRAME",
    "MESSAGE",
    "PRESENCE",
    "FrameResource",
    "HelloResource",
    "PresenceResource",
    "source_of",
]

log = logging.getLogger(__name__)

PRESENCE = ("hearth", "presence")
HELLO = ("hearth", "hello")
FRAME = {Channel.REQUESTS: ("hearth", "f", "req"), Channel.RESPONSES: ("hearth", "f", "resp")}
MESSAGE = {Channel.REQUESTS: ("hearth", "m", "req"), Channel.RESPONSES: ("hearth", "m", "resp")}
PRESENCE_TYPE = "hearth.presence"
"""The presence resource's ``rt`` in ``/.well-known/core`` (what multicast discovery asks for)."""
MAX_PLAIN_FRAME = 1024
"""Longest unprotected frame: one block (SZX 6), so one datagram on any LAN."""


def source_of(remote: object) -> Endpoint | None:
    """The (host, port) a request came from, IPv4-mapped addresses unmapped (None if not UDP/IP)."""
    sockaddr = getattr(remote, "sockaddr", None)
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        return None
    try:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(sockaddr[1])


class PresenceResource(resource.Resource):  # type: ignore[misc]
    """Serves the current board frame."""

    rt = PRESENCE_TYPE

    def __init__(self) -> None:
        super().__init__()
        self.frame: bytes | None = None

    async def render_get(self, request: Message) -> Message:
        if self.frame is None:
            raise error.NotFound("no presence announced yet")
        return Message(code=CONTENT, payload=self.frame)


class HelloResource(resource.Resource):  # type: ignore[misc]
    """Hands the hello's source to ``heard`` (which fetches its presence, bounded)."""

    def __init__(self, heard: Callable[[Endpoint], None]) -> None:
        super().__init__()
        self.heard = heard

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False

    async def render_post(self, request: Message) -> Message:
        source = source_of(request.remote)
        if source is not None:
            if len(request.payload) == 2:  # a group hello names the port its board is on
                source = (source[0], int.from_bytes(request.payload, "big"))
            self.heard(source)
        return Message(code=CHANGED)


class FrameResource(resource.Resource):  # type: ignore[misc]
    """Hands one unprotected frame for ``channel`` (and where it came from) to ``received``; it returns
    False when the inbox is full (answered 5.03: the sender's retry or fallback takes it)."""

    def __init__(self, channel: Channel, received: Callable[[Channel, bytes, Endpoint | None], bool]) -> None:
        super().__init__()
        self.channel = channel
        self.received = received

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False

    async def render_post(self, request: Message) -> Message:
        if request.opt.block1 is not None or len(request.payload) > MAX_PLAIN_FRAME:
            raise error.RequestEntityTooLarge(f"an unprotected frame is at most {MAX_PLAIN_FRAME} bytes")
        if not self.received(self.channel, bytes(request.payload), source_of(request.remote)):
            raise error.ServiceUnavailable("inbox full")
        return Message(code=CHANGED)
