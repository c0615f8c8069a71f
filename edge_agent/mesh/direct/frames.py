"""The frames of a direct link, after TLS: each is a 4-byte big-endian header length, the header (JSON,
one pydantic model per type), then, for an answer or a message, its raw bytes. The handshake's three
frames (challenge, hello, welcome) come first; then asks and answers (bulk data, matched by id) and, in
both directions, mesh messages (a request, its chunks, a cancel, a ping: the padded JSON the broker
path would seal, here protected by the link's TLS)."""

from __future__ import annotations

import asyncio
import struct
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from edge_agent.sync.limits import MAX_CHUNK

__all__ = [
    "MAX_ANSWER_BYTES",
    "Answer",
    "Ask",
    "Challenge",
    "Hello",
    "Hostile",
    "Message",
    "Welcome",
    "read_frame",
    "write_frame",
]

MAX_ANSWER_BYTES = MAX_CHUNK
"""The largest chunk a manifest may sign (sync.limits): a wire bound, not a setting."""
_HEX32 = r"^[0-9a-f]{32}$"

F = TypeVar("F", bound="Frame")


class Hostile(Exception):
    """A peer broke the link's framing or handshake (dropped and counted, never trusted). Internal to
    `mesh.direct`: every place that can raise it catches it, so it is not in the errors tree."""


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Challenge(Frame):
    type: Literal["challenge"] = "challenge"
    server: str = Field(pattern=_HEX32)
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")


class Hello(Frame):
    type: Literal["hello"] = "hello"
    device: str = Field(pattern=_HEX32)
    signature: str = Field(max_length=100)


class Welcome(Frame):
    type: Literal["welcome"] = "welcome"


class Ask(Frame):
    """One chunk of one update, by its manifest's content id."""

    type: Literal["ask"] = "ask"
    id: int = Field(ge=0, le=2**62)
    content_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    index: int = Field(ge=0, le=1 << 20)


class Answer(Frame):
    type: Literal["answer"] = "answer"
    id: int = Field(ge=0, le=2**62)
    length: int = Field(ge=0, le=MAX_ANSWER_BYTES)
    error: str | None = Field(default=None, max_length=200)


MAX_MESSAGE_BYTES = 16 << 20
"""Ceiling of a message's length field (`MeshLimits.max_frame_bytes`' own ceiling); the receiving link
holds it to its node's ``max_frame_bytes`` before reading a byte of it."""


class Message(Frame):
    """A mesh message, to the recipient's request or response inbox as on the broker path."""

    type: Literal["msg"] = "msg"
    channel: Literal["req", "resp"]
    length: int = Field(ge=1, le=MAX_MESSAGE_BYTES)


ASK_OR_MESSAGE: TypeAdapter[Ask | Message] = TypeAdapter(
    Annotated[Ask | Message, Field(discriminator="type")]
)
"""What a served link reads after the welcome."""
ANSWER_OR_MESSAGE: TypeAdapter[Answer | Message] = TypeAdapter(
    Annotated[Answer | Message, Field(discriminator="type")]
)
"""What the asking side of a link reads."""


async def write_frame(writer: asyncio.StreamWriter, frame: Frame, data: bytes = b"") -> None:
    header = frame.model_dump_json().encode()
    # One write, so one TLS record: the peer wakes once per frame, not once for the header and again
    # for its bytes (half the round trip's cost for a 4 KB message).
    writer.write(b"".join((struct.pack(">I", len(header)), header, data)))
    await writer.drain()


async def read_frame(
    reader: asyncio.StreamReader, model: type[F] | TypeAdapter[F], max_header_bytes: int
) -> F:
    """The next frame, which must be a ``model`` (or one of an adapter's union); raises Hostile for
    anything else or an oversized header (read before any of it is), asyncio.IncompleteReadError if
    the link closes."""
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length > max_header_bytes:
        raise Hostile(f"a {length}-byte frame header (at most {max_header_bytes})")
    raw = await reader.readexactly(length)
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_json(raw)
        return model.model_validate_json(raw)
    except ValidationError as exc:
        name = model.__name__ if isinstance(model, type) else "known"
        raise Hostile(f"not a {name} frame: {exc.errors()[0]['msg']}") from None
