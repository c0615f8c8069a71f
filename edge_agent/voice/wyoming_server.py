"""Home Assistant Assist's speech to text over the Wyoming protocol, transcribed by the household.

Home Assistant's `wyoming` integration asks ``describe`` (and wants ``info`` within about a second), then
opens one connection per utterance: ``transcribe`` (language), ``audio-start``, ``audio-chunk``...,
``audio-stop``, and reads until a ``transcript``. The answer, as wyoming 1.7+ streams it::

    transcript-start      language
    transcript-chunk ...  one per window of speech, as soon as it is transcribed (delta text: the chunks
                          joined are the whole text)
    transcript            the whole text (all a client before wyoming 1.7 reads; it ignores the rest)
    transcript-stop

Audio in any common format (8-96 kHz, 8-32 bit, mono or stereo) becomes 16 kHz mono s16 as it arrives:
channels averaged and soxr's HQ resampler, as for files (`edge_agent.audio.decode`), since audioop's
`ratecv` (what wyoming's own converter uses) does no anti-alias filtering. The recording is bounded
(``max_seconds``: one voice command, ``[voice] wyoming_max_seconds``), then handed whole to the
`Transcriber` (VAD, windows, routing: for Assist, only devices trusted to transcribe commands).

Whoever asked for a transcript always gets one: every refusal is an ``error`` event followed by an empty
``transcript``, or Home Assistant would wait for it forever. Input that is not the protocol (not JSON,
oversized, out of order) gets an ``error`` event, one log line (never a traceback) and the connection
closed; the server and every other connection carry on. Unknown event types are dropped (the protocol
asks servers to, so that newer clients can send e.g. ``select-program``), up to a bound.

Wyoming has no authentication, by design (a trusted LAN), and Home Assistant's client sends no secret,
so the lock is the client's address: the server binds loopback unless told otherwise and answers only
the addresses in ``allow`` (``[voice] wyoming_allow``; loopback by default). What an allowed client can
make it do is bounded: connections (in all, and per source address), idle time between events, the time
a connection may hold its slot before its audio starts (pings and describes do not keep it open) and
while its audio arrives, header and payload sizes, one command's worth of audio and one transcription
per connection. The listening loop runs under the agent's `Supervisor` (restarted if its socket dies),
and a connection that fails inside Hearth is dropped and counted there; the others carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent import __version__
from edge_agent.audio.pcm import float_to_pcm16
from edge_agent.client.schemas import BYTES_PER_SECOND, SAMPLE_RATE
from edge_agent.errors import HearthError, InvalidAudioError, NoRouteError
from edge_agent.supervision import Supervisor
from edge_agent.voice.transcript import Transcriber, TranscriptPiece
from edge_agent.voice.wyoming_advert import WyomingAdvertiser, should_advertise

with warnings.catch_warnings():
    # wyoming.audio imports the stdlib audioop (deprecated on 3.11-3.12; we never call it).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.error import Error
    from wyoming.event import Event, async_write_event
    from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
    from wyoming.ping import Ping, Pong

if TYPE_CHECKING:
    from edge_agent.config import VoiceSection

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PORT",
    "WHISPER_TINY_EN",
    "AsrModelInfo",
    "WyomingServer",
    "WyomingServerState",
]

DEFAULT_PORT = 10300
"""Wyoming's customary port for speech to text (wyoming-faster-whisper's)."""
MAX_HEADER_BYTES = 16 << 10
"""An event's JSON line; Home Assistant's are under 300 bytes, a ``transcribe`` with bias lists a few KiB."""
MAX_DATA_BYTES = 64 << 10
"""An event's extra JSON data (``data_length``)."""
MAX_PAYLOAD_BYTES = 4 << 20
"""One event's binary payload: 4 MiB is 21 s of 48 kHz stereo s16; Home Assistant sends ~2 KiB chunks."""
MAX_IGNORED_EVENTS = 16
"""Unknown events dropped per connection before it counts as abuse and is closed."""
MIN_RATE, MAX_RATE = 8000, 96_000
"""Telephone rate (below it speech's band is gone) up to studio rate."""
IDLE_TIMEOUT_S = 20.0
"""Longest wait for a client's next event: a live microphone sends a chunk every few tens of ms."""
HOLD_S = 30.0
"""Longest a connection may stay open before its audio starts, whatever it sends meanwhile: Home
Assistant asks ``describe`` on a connection of its own and closes it, and starts an utterance's audio at
once; pings do not count as activity past this."""
UTTERANCE_WALL_FACTOR, UTTERANCE_SLACK_S = 2.0, 5.0
"""After audio-start, audio-stop must come within 2 x max_seconds + 5 s (a microphone streams in real
time): a client trickling a byte now and then cannot hold its slot for ever."""
MAX_SECONDS = 30.0
"""Default utterance bound: one voice command (Assist ends one after 15 s of speech)."""
LOOPBACK: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
REFUSAL_LOG_S = 60.0
"""A refused address is logged at most once per this many seconds (a flood writes no flood of lines)."""
WRITE_TIMEOUT_S = 10.0
"""Longest a client may leave our events unread (its socket buffer full) before it counts as gone."""
DRAIN_S = 30.0
"""After refusing an utterance, how long its remaining audio is read (and dropped) until audio-stop."""
LINGER_S, LINGER_BYTES = 2.0, 1 << 20
"""Closing after a protocol error: unread input is read and dropped this long, so the client gets our
error event rather than a reset (a close with unread data sends RST, which can discard it)."""
CLOSE_S = 10.0
"""Shutdown: the advert's goodbye and the listening socket, at most."""

HEARTH_URL = "https://github.com/hearth-edge/hearth"


class WyomingServerState(enum.Enum):
    UNOPENED = "unopened"
    SERVING = "serving"
    CLOSED = "closed"


class AsrModelInfo(BaseModel):
    """One speech-to-text model as ``info`` shows it to Home Assistant (which lists its languages)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    languages: list[str] = Field(min_length=1, max_length=100)
    version: str | None = Field(default=None, max_length=64)
    description: str = Field(default="", max_length=200)
    attribution_name: str = Field(min_length=1, max_length=100)
    attribution_url: str = Field(min_length=1, max_length=200)
    installed: bool = True

    def wyoming(self) -> AsrModel:
        return AsrModel(
            name=self.name,
            attribution=Attribution(name=self.attribution_name, url=self.attribution_url),
            installed=self.installed,
            description=self.description or None,
            version=self.version,
            languages=list(self.languages),
        )


WHISPER_TINY_EN = AsrModelInfo(
    name="whisper-tiny.en",
    languages=["en"],
    version="tiny.en",
    description="Whisper tiny.en (OpenAI, MIT licence), on this household's devices",
    attribution_name="OpenAI",
    attribution_url="https://github.com/openai/whisper",
)


class _Header(BaseModel):
    """An event's JSON line. Unknown keys (``version``, future ones) are ignored, as the protocol says."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: str = Field(min_length=1, max_length=64)
    data: dict[str, Any] | None = None
    data_length: int | None = Field(default=None, ge=0, le=MAX_DATA_BYTES)
    payload_length: int | None = Field(default=None, ge=0, le=MAX_PAYLOAD_BYTES)


class _AudioFormat(BaseModel):
    """``audio-start`` and each ``audio-chunk``: rate (Hz), width (bytes per sample), channels."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    rate: int = Field(ge=MIN_RATE, le=MAX_RATE)
    width: int = Field(ge=1, le=4)
    channels: int = Field(ge=1, le=2)

    def __str__(self) -> str:
        return f"{self.rate} Hz, {self.width * 8} bit, {self.channels} channel(s)"


class _TranscribeData(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    language: str | None = Field(default=None, max_length=35)  # BCP 47's longest common tags
    name: str | None = Field(default=None, max_length=64)


class _Refused(Exception):
    """A client's mistake, or a request we will not serve: answered with an ``error`` event (code, text),
    logged as one line. ``drain``: the client is well-behaved but its utterance is refused (too long, a
    language we do not have): read its audio until audio-stop, then close; otherwise close now."""

    def __init__(self, code: str, text: str, *, drain: bool = False) -> None:
        super().__init__(text)
        self.code, self.text, self.drain = code, text, drain


class _ClientGone(Exception):
    """The client closed, reset or stopped reading: nobody is left to answer."""


def _why(exc: ValidationError) -> str:
    """Pydantic's errors as one short line: ``field: reason; ...``."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)


def _shown(text: str, limit: int = 64) -> str:
    """An untrusted string as it may appear in a log line or an error text (quoted, cut, escaped)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class _ToSpeechFormat:
    """One utterance's audio, converted chunk by chunk to 16 kHz mono s16le (resampler state carries
    across chunks; 16 kHz mono s16 passes through untouched)."""

    def __init__(self, fmt: _AudioFormat) -> None:
        import soxr

        self.fmt = fmt
        self.frame_bytes = fmt.width * fmt.channels
        self.passthrough = (fmt.rate, fmt.width, fmt.channels) == (SAMPLE_RATE, 2, 1)
        self._rest = b""
        self._resampler = (
            None if fmt.rate == SAMPLE_RATE else soxr.ResampleStream(fmt.rate, SAMPLE_RATE, 1, quality="HQ")
        )

    def _floats(self, audio: bytes) -> npt.NDArray[np.float32]:
        width = self.fmt.width
        if width == 1:  # unsigned 8-bit, as in WAV
            samples = (np.frombuffer(audio, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 3:  # packed signed 24-bit little-endian
            b = np.frombuffer(audio, np.uint8).reshape(-1, 3).astype(np.int32)
            value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            samples = ((value ^ 0x800000) - 0x800000).astype(np.float32) / float(1 << 23)
        else:
            dtype, scale = ("<i2", 1 << 15) if width == 2 else ("<i4", 1 << 31)
            samples = (np.frombuffer(audio, dtype).astype(np.float64) / scale).astype(np.float32)
        if self.fmt.channels == 2:
            samples = samples.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        return samples

    def convert(self, audio: bytes) -> bytes:
        """Chunks need not hold whole frames: Home Assistant's STT API forwards its HTTP body as it
        arrives (split anywhere), so a frame cut between two chunks is put back together."""
        if self._rest:
            audio = self._rest + audio
        cut = len(audio) - len(audio) % self.frame_bytes
        audio, self._rest = audio[:cut], audio[cut:]
        if self.passthrough or not audio:
            return audio
        mono = self._floats(audio)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        return float_to_pcm16(mono)

    def finish(self) -> bytes:
        """What the resampler still holds (its filter delay), at audio-stop; a trailing part of a frame
        (less than one sample) is dropped."""
        self._rest = b""
        if self._resampler is None:
            return b""
        return float_to_pcm16(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))


class WyomingServer:
    """A Wyoming speech-to-text server: an async context manager, serving while open. One task group
    holds every connection; closing cancels them (and says the zeroconf goodbye first)."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        name: str = "Hearth",
        models: Sequence[AsrModelInfo] = (WHISPER_TINY_EN,),
        max_seconds: float = MAX_SECONDS,
        max_connections: int = 4,
        max_per_source: int = 2,
        allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = LOOPBACK,
        advertise: bool = False,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        hold_s: float = HOLD_S,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``port`` 0 takes a free port (read ``.port`` once open). ``host`` is loopback by default:
        Home Assistant on another machine needs an address it reaches (the caller's explicit choice),
        and its address in ``allow`` (only those clients are answered). ``max_seconds``: the longest
        utterance accepted (a bounded buffer). ``advertise``: zeroconf ``_wyoming._tcp`` on the bound
        addresses. ``supervisor``: the agent's (restarts, drops); a private one if None."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, not {port}")
        if not name.strip():
            raise ValueError("name must not be empty")
        if not models:
            raise ValueError("at least one model must be described")
        if not 0 < max_seconds <= 4 * 3600:
            raise ValueError(f"max_seconds must be in (0, 14400], not {max_seconds}")
        if max_connections < 1 or max_per_source < 1:
            raise ValueError(f"connection limits must be at least 1, not {max_connections}/{max_per_source}")
        if not allow:
            raise ValueError("allow must name at least one client address or network")
        self.transcriber = transcriber
        self.host, self.port, self.name = host, port, name.strip()
        self.models = list(models)
        self.languages = list(dict.fromkeys(lang for m in self.models if m.installed for lang in m.languages))
        self.max_seconds, self.max_connections = max_seconds, max_connections
        self.max_per_source, self.allow = max_per_source, tuple(allow)
        self.advertise, self.idle_timeout_s, self.hold_s = advertise, idle_timeout_s, hold_s
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.state = WyomingServerState.UNOPENED
        self.advertiser: WyomingAdvertiser | None = None
        self.addresses: list[str] = []
        """The bound socket addresses, once open."""
        self.info = self._info()
        self._server: asyncio.Server | None = None
        self._group: asyncio.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()
        self._connections: set[asyncio.Task[None]] = set()
        self._turned_away: set[asyncio.Task[None]] = set()
        self._serving: asyncio.Task[None] | None = None
        self.sources: Counter[str] = Counter()
        """Open connections per client address."""
        self._refusals_logged: dict[str, float] = {}

    @classmethod
    def for_voice(
        cls,
        voice: VoiceSection,
        transcriber: Transcriber,
        *,
        name: str = "Hearth",
        supervisor: Supervisor | None = None,
    ) -> Self:
        """From the agent's [voice] section (wyoming_host, _port, _advertise, _allow, _max_seconds,
        _max_connections, _max_per_source)."""
        return cls(
            transcriber, host=voice.wyoming_host, port=voice.wyoming_port, name=name,
            max_seconds=voice.wyoming_max_seconds, max_connections=voice.wyoming_max_connections,
            max_per_source=voice.wyoming_max_per_source, allow=voice.wyoming_allow,
            advertise=should_advertise(voice.wyoming_advertise, voice.wyoming_host), supervisor=supervisor,
        )  # fmt: skip

    def _info(self) -> Info:
        return Info(
            asr=[
                AsrProgram(
                    name=self.name,
                    attribution=Attribution(name="Hearth", url=HEARTH_URL),
                    installed=True,
                    description="Speech to text on this household's devices (VAD here, Whisper wherever "
                    "routing allows)",
                    version=__version__,
                    models=[m.wyoming() for m in self.models],
                    supports_transcript_streaming=True,  # a transcript-chunk per window, as it is done
                    requires_external_vad=True,  # the client says when the utterance ends (audio-stop)
                )
            ]
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not WyomingServerState.UNOPENED:
            raise RuntimeError(f"this Wyoming server is {self.state.value}; make a new one")
        try:
            self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.callback(self._cancel_connections)  # runs first: the group then only waits
            self._server = await self._listen()
            self._stack.push_async_callback(self._stop_listening)
            self.addresses = [str(s.getsockname()[0]) for s in self._server.sockets]
            self.port = int(self._server.sockets[0].getsockname()[1])
            self.state = WyomingServerState.SERVING
            serving = self.supervisor.supervise(
                "wyoming", self._serve, stopping=lambda: self.state is not WyomingServerState.SERVING
            )
            self._serving = self._group.create_task(serving, name="wyoming")
            log.info("serving Wyoming speech to text on %s port %d", ", ".join(self.addresses), self.port)
            if self.advertise:  # entered last, left first: the goodbye goes out before the port closes
                self.advertiser = WyomingAdvertiser(self.name, self.port, self.addresses)
                await self._stack.enter_async_context(self.advertiser)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.state is WyomingServerState.CLOSED:
            return
        self.state = WyomingServerState.CLOSED
        await self._stack.aclose()

    async def _listen(self) -> asyncio.Server:
        try:
            return await asyncio.start_server(self._accept, self.host, self.port, limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise HearthError(
                f"cannot serve Wyoming on {self.host}:{self.port}: {exc.strerror or exc} "
                "([voice] wyoming_host / wyoming_port)"
            ) from None

    async def _serve(self) -> None:
        """The supervised loop: serve until closed; a listening socket that closes under us (not by
        our own close) is an unexpected failure, and the supervisor's restart listens again."""
        if self._server is None or not self._server.is_serving():
            self._server = await self._listen()
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # we are being stopped
                raise
            raise RuntimeError("the listening socket was closed") from None

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._cancel_connections()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_S):
                await server.wait_closed()

    def _cancel_connections(self) -> None:
        for task in (*self._connections, *self._turned_away):
            task.cancel()
        if self._serving is not None:
            self._serving.cancel()

    # -- connections ----------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by asyncio for each connection: it runs in our task group, or is turned away. A
        failure in here is Hearth's bug: the connection is dropped and counted, the server goes on."""
        host, address = _peer_address(writer)
        peer = _peer_name(writer)
        if self.state is not WyomingServerState.SERVING or self._group is None:
            writer.transport.abort()
            return
        try:
            self._admit(reader, writer, host, address, peer)
        except RuntimeError:  # the task group is shutting down
            writer.transport.abort()
        except Exception as exc:
            self.supervisor.drop("wyoming", type(exc).__name__, exc, f"wyoming {peer}: could not take it")
            writer.transport.abort()

    def _admit(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        address: _Address | None,
        peer: str,
    ) -> None:
        assert self._group is not None
        if address is None or not any(address in net for net in self.allow):
            self._log_refusal(host, f"wyoming {peer}: refused, not in [voice] wyoming_allow")
            self._turn_away(reader, writer, "forbidden", f"{host} may not use this Wyoming server "
                            "(not in its allow-list: [voice] wyoming_allow)")  # fmt: skip
        elif len(self._connections) >= self.max_connections:
            log.warning("wyoming %s: turned away, %d connections already open", peer, self.max_connections)
            self._turn_away(reader, writer, "busy", f"busy: {self.max_connections} Wyoming connections "
                            "are already open here; try again later")  # fmt: skip
        elif self.sources[host] >= self.max_per_source:
            self._log_refusal(host, f"wyoming {peer}: turned away, {self.max_per_source} connections "
                              "from it already open")  # fmt: skip
            self._turn_away(reader, writer, "busy", f"busy: {self.max_per_source} Wyoming connections from "
                            f"{host} are already open here; try again later")  # fmt: skip
        else:
            conn = _Connection(self, reader, writer, peer)
            task = self._group.create_task(conn.run(), name=f"wyoming {peer}")
            self._connections.add(task)
            self.sources[host] += 1
            task.add_done_callback(lambda done: self._closed(done, host))

    def _closed(self, task: asyncio.Task[None], host: str) -> None:
        self._connections.discard(task)
        self.sources[host] -= 1
        if self.sources[host] <= 0:
            del self.sources[host]

    def _turn_away(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, text: str
    ) -> None:
        """An error event, then closed; past as many refusals in flight as connections, no answer at
        all (a flood)."""
        assert self._group is not None
        if len(self._turned_away) >= self.max_connections:
            writer.transport.abort()
            return
        task = self._group.create_task(_refuse_and_close(reader, writer, code, text), name="wyoming busy")
        self._turned_away.add(task)
        task.add_done_callback(self._turned_away.discard)

    def _log_refusal(self, host: str, text: str) -> None:
        now = time.monotonic()
        if now - self._refusals_logged.get(host, -REFUSAL_LOG_S) < REFUSAL_LOG_S:
            return
        if len(self._refusals_logged) >= 256:
            self._refusals_logged.clear()
        self._refusals_logged[host] = now
        log.warning("%s", text)


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _peer_address(writer: asyncio.StreamWriter) -> tuple[str, _Address | None]:
    """The client's address (an IPv4-mapped IPv6 one as IPv4, as the allow-list names it)."""
    peer = writer.get_extra_info("peername")
    if not (isinstance(peer, tuple) and peer):
        return "client", None
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0]), None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), address


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return "client"


async def _write(writer: asyncio.StreamWriter, event: Event) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await async_write_event(event, writer)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:  # RuntimeError: the transport is closing
        raise _ClientGone(type(exc).__name__) from None


async def _linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close, letting what we wrote go out; a client that will not take it is cut off."""
    writer.close()
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.wait_closed()
    except (ConnectionError, TimeoutError, OSError):
        writer.transport.abort()


async def _refuse_and_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, text: str
) -> None:
    try:
        await _write(writer, Error(text=text, code=code).event())
        await _linger_close(reader, writer)
        await _close(writer)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except (_ClientGone, ConnectionError, OSError, RuntimeError):
        writer.transport.abort()


class _Connection:
    """One client connection: at most one utterance, then closed."""

    def __init__(
        self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        self.server, self.reader, self.writer, self.peer = server, reader, writer, peer
        self.language = server.languages[0] if server.languages else "en"
        self.requested = False
        """A transcript is owed: ``transcribe`` or ``audio-start`` came."""
        self.format: _AudioFormat | None = None
        self.converter: _ToSpeechFormat | None = None
        self.pcm = bytearray()
        self.ignored = 0
        self.max_bytes = int(server.max_seconds * BYTES_PER_SECOND)
        self.deadline = time.monotonic() + server.hold_s
        """When this connection's slot is up unless its utterance moves on (audio-start resets it)."""
        self.deadline_why = f"no audio within {server.hold_s:g} s of connecting (pings do not keep it open)"

    async def run(self) -> None:
        try:
            try:
                await self._converse()
            except _Refused as refusal:
                await self._refuse(refusal)
            await _close(self.writer)
        except asyncio.CancelledError:  # the server is closing
            self.writer.transport.abort()
            raise
        except (_ClientGone, ConnectionError, OSError) as exc:
            log.debug("wyoming %s: the client went away (%s)", self.peer, exc or type(exc).__name__)
            self.writer.transport.abort()
        except Exception as exc:  # our bug, not the client's: dropped and counted, the server runs on
            what = f"wyoming {self.peer}: the connection failed inside Hearth"
            self.server.supervisor.drop("wyoming", type(exc).__name__, exc, what)
            self.writer.transport.abort()

    async def _refuse(self, refusal: _Refused) -> None:
        log.warning("wyoming %s: %s (%s)", self.peer, refusal.text, refusal.code)
        await _write(self.writer, Error(text=refusal.text, code=refusal.code).event())
        if self.requested:
            await _write(self.writer, Transcript(text="", language=self.language).event())
        if refusal.drain:
            await self._drain()
        else:
            await _linger_close(self.reader, self.writer)

    async def _drain(self) -> None:
        """The rest of a refused utterance, read and dropped (bounded), so the client can finish sending
        and read our answer; then the connection closes."""
        try:
            async with asyncio.timeout(DRAIN_S):
                while (event := await self._read_event()) is not None and not AudioStop.is_type(event.type):
                    pass
        except (_Refused, TimeoutError):
            pass

    # -- reading --------------------------------------------------------------------------------------

    async def _next_event(self) -> Event | None:
        """The next event within the idle timeout, and before the connection's deadline (the hold
        before audio starts, then the utterance's wall-clock bound): whichever comes first."""
        idle = self.server.idle_timeout_s
        left = self.deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, min(idle, left))):
                return await self._read_event()
        except TimeoutError:
            if left < idle:
                raise _Refused("timeout", f"{self.deadline_why}; closing the connection") from None
            raise _Refused("timeout", f"no event for {idle:g} s; closing the connection") from None

    async def _read_event(self) -> Event | None:
        """The next event, bounded at every step; None at a clean end of the connection."""
        reader = self.reader
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _Refused("bad-event", "the connection ended inside an event header") from None
            return None
        except asyncio.LimitOverrunError:
            raise _Refused("bad-event", f"an event header is longer than {MAX_HEADER_BYTES} bytes") from None
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
            raise _Refused("bad-event", "an event header is not a JSON line") from None
        if not isinstance(raw, dict):
            raise _Refused("bad-event", "an event header is not a JSON object")
        try:
            header = _Header.model_validate(raw)
        except ValidationError as exc:
            raise _Refused("bad-event", f"bad event header: {_why(exc)}") from None
        data = dict(header.data or {})
        try:
            if header.data_length:
                extra = json.loads(await reader.readexactly(header.data_length))
                if not isinstance(extra, dict):
                    raise _Refused("bad-event", f"event {_shown(header.type)}: its data is not a JSON object")
                data.update(extra)
            payload = await reader.readexactly(header.payload_length) if header.payload_length else None
        except asyncio.IncompleteReadError:
            raise _Refused("bad-event", f"the connection ended inside event {_shown(header.type)}") from None
        except (ValueError, RecursionError):
            raise _Refused("bad-event", f"event {_shown(header.type)}: its data is not JSON") from None
        return Event(type=header.type, data=data, payload=payload)

    # -- the conversation -----------------------------------------------------------------------------

    async def _converse(self) -> None:
        while (event := await self._next_event()) is not None:
            kind = event.type
            if Describe.is_type(kind):
                await _write(self.writer, self.server.info.event())
            elif Ping.is_type(kind):
                echo = event.data.get("text")
                await _write(self.writer, Pong(text=echo if isinstance(echo, str) else None).event())
            elif Transcribe.is_type(kind):
                self._on_transcribe(event)
            elif AudioStart.is_type(kind):
                self._on_audio_start(event)
            elif AudioChunk.is_type(kind):
                self._on_audio_chunk(event)
            elif AudioStop.is_type(kind):
                if self.converter is None:
                    raise _Refused("unexpected-event", "audio-stop before audio-start")
                tail = self.converter.finish()  # the resampler's last few ms: never refused for them
                self.pcm += tail[: max(0, self.max_bytes - len(self.pcm))]
                await self._transcribe()
                return  # one utterance per connection
            else:
                self.ignored += 1
                if self.ignored > MAX_IGNORED_EVENTS:
                    raise _Refused("bad-event", f"more than {MAX_IGNORED_EVENTS} unknown events")
                log.info("wyoming %s: ignored an unknown event %s", self.peer, _shown(kind))
        if self.requested:
            log.info("wyoming %s: the client left before audio-stop", self.peer)

    def _on_transcribe(self, event: Event) -> None:
        if self.converter is not None:
            raise _Refused("unexpected-event", "transcribe after audio-start")
        try:
            asked = _TranscribeData.model_validate(event.data)
        except ValidationError as exc:
            raise _Refused("bad-event", f"bad transcribe: {_why(exc)}") from None
        self.requested = True
        if asked.language:
            base = asked.language.replace("_", "-").split("-", 1)[0].lower()
            if base not in self.server.languages:
                raise _Refused(
                    "unsupported-language",
                    f"language {_shown(asked.language)} is not served here "
                    f"(only {', '.join(self.server.languages)})",
                    drain=True,
                )
            self.language = base

    def _format(self, event: Event, what: str) -> _AudioFormat:
        try:
            return _AudioFormat.model_validate(event.data)
        except ValidationError as exc:
            raise _Refused("bad-audio", f"bad {what}: {_why(exc)}") from None

    def _on_audio_start(self, event: Event) -> None:
        if self.converter is not None:
            raise _Refused("unexpected-event", "a second audio-start in one connection")
        self.requested = True
        self.format = self._format(event, "audio-start")
        self.converter = _ToSpeechFormat(self.format)
        wall = UTTERANCE_WALL_FACTOR * self.server.max_seconds + UTTERANCE_SLACK_S
        self.deadline = time.monotonic() + wall
        self.deadline_why = f"the utterance's audio took over {wall:g} s to arrive"

    def _on_audio_chunk(self, event: Event) -> None:
        if self.converter is None or self.format is None:
            raise _Refused("unexpected-event", "audio-chunk before audio-start")
        fmt = self._format(event, "audio-chunk")
        if fmt != self.format:
            raise _Refused("bad-audio", f"an audio-chunk in {fmt}, after audio-start said {self.format}")
        audio = event.payload or b""
        seconds_in = len(audio) / (fmt.rate * fmt.width * fmt.channels)
        if len(self.pcm) / BYTES_PER_SECOND + seconds_in > self.server.max_seconds + 0.01:
            self._too_long()
        self._append(self.converter.convert(audio))

    def _append(self, pcm: bytes) -> None:
        if len(self.pcm) + len(pcm) > self.max_bytes:
            self._too_long()
        self.pcm += pcm

    def _too_long(self) -> None:
        self.pcm = bytearray()
        raise _Refused(
            "audio-too-long",
            f"the utterance passed {self.server.max_seconds:g} s, the most this server takes",
            drain=True,
        )

    async def _transcribe(self) -> None:
        """The recording to the transcriber; its pieces streamed as they come, then the whole text. Any
        failure is an error event and an empty transcript: the client always gets its transcript."""
        pcm, self.pcm = bytes(self.pcm), bytearray()
        started = time.perf_counter()
        await _write(self.writer, TranscriptStart(language=self.language).event())
        texts: list[str] = []
        failure: tuple[str, str] | None = None
        pieces: AsyncIterator[TranscriptPiece] | None = None
        try:
            pieces = self.server.transcriber.transcribe_pcm(pcm, language=self.language)
            async for piece in pieces:
                text = piece.text.strip()
                if text:  # delta text: the chunks joined are the whole transcript
                    await _write(self.writer, TranscriptChunk(text=f" {text}" if texts else text).event())
                    texts.append(text)
                if piece.final:
                    break
        except _ClientGone:
            raise
        except InvalidAudioError as exc:
            failure = ("invalid-audio", str(exc))
        except NoRouteError as exc:
            failure = ("no-route", str(exc))
        except HearthError as exc:
            failure = ("transcription-failed", str(exc))
        except Exception as exc:  # our bug: counted (the agent's health), answered, the server runs on
            what = f"wyoming {self.peer}: the transcription failed inside Hearth"
            self.server.supervisor.drop("wyoming", type(exc).__name__, exc, what)
            failure = ("internal-error", "the transcription failed inside Hearth (see the agent's log)")
        finally:
            aclose = getattr(pieces, "aclose", None)  # an async generator left at its final piece
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        seconds = len(pcm) / BYTES_PER_SECOND
        if failure is not None:
            code, text = failure
            log.warning(
                "wyoming %s: %.1f s of audio not transcribed: %s (%s)", self.peer, seconds, text, code
            )
            await _write(self.writer, Error(text=text, code=code).event())
            texts = []
        else:
            log.info("wyoming %s: transcribed %.1f s of audio in %.0f ms (%d characters)", self.peer, seconds,
                     (time.perf_counter() - started) * 1000, sum(len(t) for t in texts))  # fmt: skip
        await _write(self.writer, Transcript(text=" ".join(texts), language=self.language).event())
        await _write(self.writer, TranscriptStop().event())
