"""The frames of a direct link, after TLS. The handshake's three frames (challenge, hello, welcome) come
first; then asks and answers (bulk data, matched by id) and, in both directions, mesh messages (a
request, its chunks, a cancel, a ping: the padded JSON the broker path would seal, here protected by the
link's TLS).

Control frames are a 4-byte big-endian header length, the header (JSON, one pydantic model per type),
then, for an answer, its raw bytes. A message, the hot path, is one 4-byte word and its bytes: bit 31
set (a header length never has it: headers are at most 1 MiB), bit 30 the channel (set: responses), the
low 30 bits its length, held to the receiving node's frame limit before a byte of it is read. Encoding
and validating a JSON header per message was a tenth of a direct round trip's cost."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.mesh.interfaces import Channel
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
    "read_frame_or_message",
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


_MESSAGE_BIT = 1 << 31
_RESPONSES_BIT = 1 << 30
_WORD = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Message:
    """A mesh message's prefix: to the recipient's request or response inbox, as on the broker path."""

    channel: Channel
    length: int

    def prefix(self) -> bytes:
        if not 1 <= self.length <= MAX_MESSAGE_BYTES:
            raise ValueError(f"a direct message is 1 to {MAX_MESSAGE_BYTES} bytes, not {self.length}")
        responses = _RESPONSES_BIT if self.channel is Channel.RESPONSES else 0
        return _WORD.pack(_MESSAGE_BIT | responses | self.length)


def _message(word: int) -> Message:
    length = word & (_RESPONSES_BIT - 1)
    if length < 1:
        raise Hostile("an empty message")
    return Message(Channel.RESPONSES if word & _RESPONSES_BIT else Channel.REQUESTS, length)


async def write_frame(writer: asyncio.StreamWriter, frame: Frame, data: bytes = b"") -> None:
    header = frame.model_dump_json().encode()
    # One write, so one TLS record: the peer wakes once per frame, not once for the header and again
    # for its bytes (half the round trip's cost for a 4 KB message).
    writer.write(b"".join((struct.pack(">I", len(header)), header, data)))
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader, model: type[F], max_header_bytes: int) -> F:
    """The next frame, which must be a ``model``; raises Hostile for anything else or an oversized
    header (read before any of it is), asyncio.IncompleteReadError if the link closes."""
    (length,) = _WORD.unpack(await reader.readexactly(4))
    return await _control(reader, model, length, max_header_bytes)


async def read_frame_or_message(
    reader: asyncio.StreamReader, model: type[F], max_header_bytes: int
) -> F | Message:
    """After the handshake: the next control frame (a ``model``) or a message's prefix (its bytes are
    the caller's to read, once it has checked the length)."""
    (word,) = _WORD.unpack(await reader.readexactly(4))
    if word & _MESSAGE_BIT:
        return _message(word)
    return await _control(reader, model, word, max_header_bytes)


async def _control(reader: asyncio.StreamReader, model: type[F], length: int, max_header_bytes: int) -> F:
    if length > max_header_bytes:
        raise Hostile(f"a {length}-byte frame header (at most {max_header_bytes})")
    raw = await reader.readexactly(length)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise Hostile(f"not a {model.__name__} frame: {exc.errors()[0]['msg']}") from None
