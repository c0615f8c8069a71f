"""Mesh messages on direct links, both directions: what a link does with a `Message` frame it reads
(bounded, then handed to the endpoint), and how one is written. A link made for bulk data carries
requests and streams as well; whichever side made it, both may send on it.

Every bound of the broker path holds here: the message is the same padded JSON, its length is held to
the node's ``max_frame_bytes`` before a byte of it is read, the sender is the member the link's
handshake proved (re-checked per message: a revocation ends it), and what it says is decoded and
checked by the endpoint's message layer exactly as a message from the broker.
"""

from __future__ import annotations

import asyncio

from edge_agent.errors import HearthError
from edge_agent.mesh.direct.frames import Hostile, Message
from edge_agent.mesh.interfaces import Channel, PathEvents
from edge_agent.mesh.node import MeshNode

__all__ = ["LinkEvents", "read_message", "send_message"]


LinkEvents = PathEvents
"""Who hears what links carry (the endpoint's message layer, through `DirectLinks.carry`)."""


async def read_message(node: MeshNode, device_id: str, frame: Message, reader: asyncio.StreamReader) -> bytes:
    """The payload of ``frame``, once its sender and size pass; raises Hostile (the link ends)."""
    limit = node.limits.max_frame_bytes
    if frame.length > limit:
        raise Hostile(f"a {frame.length}-byte message (at most {limit})")
    try:
        node.membership.member(device_id)
    except HearthError as exc:
        raise Hostile(str(exc)) from None
    return await reader.readexactly(frame.length)


_JOIN_BELOW = 16 << 10
"""A TLS record's most: a message shorter than this goes in one record with its prefix (two records
would wake the peer twice); a longer one spans records anyway, and is not copied to join them."""


async def send_message(writer: asyncio.StreamWriter, channel: Channel, payload: bytes) -> None:
    prefix = Message(channel, len(payload)).prefix()
    if len(payload) < _JOIN_BELOW:
        writer.write(prefix + payload)
    else:
        writer.writelines((prefix, payload))
    await writer.drain()
