"""The frames of a direct link, after TLS: each is a 4-byte big-endian header length, the header (JSON,
one pydantic model per type), then, for an answer, its raw bytes. The handshake's three frames
(challenge, hello, welcome) come first; then asks and answers, matched by id."""

from __future__ import annotations

import asyncio
import struct
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.sync.limits import MAX_CHUNK

__all__ = [
    "MAX_ANSWER_BYTES",
    "Answer",
    "Ask",
    "Challenge",
    "Hello",
    "Hostile",
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


async def write_frame(writer: asyncio.StreamWriter, frame: Frame, data: bytes = b"") -> None:
    header = frame.model_dump_json().encode()
    writer.write(struct.pack(">I", len(header)) + header)
    if data:
        writer.write(data)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader, model: type[F], max_header_bytes: int) -> F:
    """The next frame, which must be a ``model``; raises Hostile for anything else or an oversized
    header (read before any of it is), asyncio.IncompleteReadError if the link closes."""
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length > max_header_bytes:
        raise Hostile(f"a {length}-byte frame header (at most {max_header_bytes})")
    try:
        return model.model_validate_json(await reader.readexactly(length))
    except ValidationError as exc:
        raise Hostile(f"not a {model.__name__} frame: {exc.errors()[0]['msg']}") from None
