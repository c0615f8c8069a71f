"""Wyoming's framing, bounded: events in (a JSON header line, optional JSON data, optional binary
payload), events out, and the closing moves that let a client read our last word.

Every size a client controls is bounded here (header line, data, payload), and every way it can break
the framing is a `Refused` (answered with an ``error`` event, logged as one line); a client that stops
reading is `ClientGone`. Nothing here holds state between events: that is `session`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

with warnings.catch_warnings():
    # wyoming.audio imports the stdlib audioop (deprecated on 3.11-3.12; we never call it).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.error import Error
    from wyoming.event import Event, async_write_event

MAX_HEADER_BYTES = 16 << 10
"""An event's JSON line; Home Assistant's are under 300 bytes, a ``transcribe`` with bias lists a few KiB."""
MAX_DATA_BYTES = 64 << 10
"""An event's extra JSON data (``data_length``)."""
MAX_PAYLOAD_BYTES = 4 << 20
"""One event's binary payload: 4 MiB is 21 s of 48 kHz stereo s16; Home Assistant sends ~2 KiB chunks."""
MIN_RATE, MAX_RATE = 8000, 96_000
"""Telephone rate (below it speech's band is gone) up to studio rate."""
WRITE_TIMEOUT_S = 10.0
"""Longest a client may leave our events unread (its socket buffer full) before it counts as gone."""
LINGER_S, LINGER_BYTES = 2.0, 1 << 20
"""Closing after a protocol error: unread input is read and dropped this long, so the client gets our
error event rather than a reset (a close with unread data sends RST, which can discard it)."""


class Header(BaseModel):
    """An event's JSON line. Unknown keys (``version``, future ones) are ignored, as the protocol says."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: str = Field(min_length=1, max_length=64)
    data: dict[str, Any] | None = None
    data_length: int | None = Field(default=None, ge=0, le=MAX_DATA_BYTES)
    payload_length: int | None = Field(default=None, ge=0, le=MAX_PAYLOAD_BYTES)


class AudioFormat(BaseModel):
    """``audio-start`` and each ``audio-chunk``: rate (Hz), width (bytes per sample), channels."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    rate: int = Field(ge=MIN_RATE, le=MAX_RATE)
    width: int = Field(ge=1, le=4)
    channels: int = Field(ge=1, le=2)

    def __str__(self) -> str:
        return f"{self.rate} Hz, {self.width * 8} bit, {self.channels} channel(s)"


class TranscribeData(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    language: str | None = Field(default=None, max_length=35)  # BCP 47's longest common tags
    name: str | None = Field(default=None, max_length=64)


class Refused(Exception):
    """A client's mistake, or a request we will not serve: answered with an ``error`` event (code, text),
    logged as one line. ``drain``: the client is well-behaved but its utterance is refused (too long, a
    language we do not have): read its audio until audio-stop, then close; otherwise close now."""

    def __init__(self, code: str, text: str, *, drain: bool = False) -> None:
        super().__init__(text)
        self.code, self.text, self.drain = code, text, drain


class ClientGone(Exception):
    """The client closed, reset or stopped reading: nobody is left to answer."""


def why(exc: ValidationError) -> str:
    """Pydantic's errors as one short line: ``field: reason; ...``."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)


def shown(text: str, limit: int = 64) -> str:
    """An untrusted string as it may appear in a log line or an error text (quoted, cut, escaped)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def audio_format(event: Event, what: str) -> AudioFormat:
    try:
        return AudioFormat.model_validate(event.data)
    except ValidationError as exc:
        raise Refused("bad-audio", f"bad {what}: {why(exc)}") from None


def transcribe_data(event: Event) -> TranscribeData:
    try:
        return TranscribeData.model_validate(event.data)
    except ValidationError as exc:
        raise Refused("bad-event", f"bad transcribe: {why(exc)}") from None


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, bounded at every step (the reader's limit is ``MAX_HEADER_BYTES``); None at a
    clean end of the connection."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise Refused("bad-event", "the connection ended inside an event header") from None
        return None
    except asyncio.LimitOverrunError:
        raise Refused("bad-event", f"an event header is longer than {MAX_HEADER_BYTES} bytes") from None
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        raise Refused("bad-event", "an event header is not a JSON line") from None
    if not isinstance(raw, dict):
        raise Refused("bad-event", "an event header is not a JSON object")
    try:
        header = Header.model_validate(raw)
    except ValidationError as exc:
        raise Refused("bad-event", f"bad event header: {why(exc)}") from None
    data = dict(header.data or {})
    try:
        if header.data_length:
            extra = json.loads(await reader.readexactly(header.data_length))
            if not isinstance(extra, dict):
                raise Refused("bad-event", f"event {shown(header.type)}: its data is not a JSON object")
            data.update(extra)
        payload = await reader.readexactly(header.payload_length) if header.payload_length else None
    except asyncio.IncompleteReadError:
        raise Refused("bad-event", f"the connection ended inside event {shown(header.type)}") from None
    except (ValueError, RecursionError):
        raise Refused("bad-event", f"event {shown(header.type)}: its data is not JSON") from None
    return Event(type=header.type, data=data, payload=payload)


async def write(writer: asyncio.StreamWriter, event: Event) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await async_write_event(event, writer)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:  # RuntimeError: the transport is closing
        raise ClientGone(type(exc).__name__) from None


async def linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close after a refusal, then read and drop what the client still sends (bounded in time and
    bytes) until it closes too: closing with unread input would reset the connection, and a reset can
    discard our error event before the client reads it."""
    with contextlib.suppress(ConnectionError, TimeoutError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        dropped = 0
        async with asyncio.timeout(LINGER_S):
            while dropped < LINGER_BYTES and (got := await reader.read(64 << 10)):
                dropped += len(got)


async def close(writer: asyncio.StreamWriter) -> None:
    """Close, letting what we wrote go out; a client that will not take it is cut off."""
    writer.close()
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.wait_closed()
    except (ConnectionError, TimeoutError, OSError):
        writer.transport.abort()


async def refuse_and_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, text: str
) -> None:
    """Turn a client away: an ``error`` event, then closed (cut off if it will not take it)."""
    try:
        await write(writer, Error(text=text, code=code).event())
        await linger_close(reader, writer)
        await close(writer)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except (ClientGone, ConnectionError, OSError, RuntimeError):
        writer.transport.abort()
