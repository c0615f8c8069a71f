"""One client connection's conversation: at most one utterance, then closed.

The state machine: any number of ``describe``/``ping`` (answered), an optional ``transcribe`` (the
language), ``audio-start`` (the format), ``audio-chunk``... (converted to speech format as they arrive,
bounded to one command's worth), ``audio-stop`` (the recording to the transcriber, its pieces streamed
back). Two clocks bound it: the idle time between events, and a deadline (the hold before audio starts,
then the utterance's wall-clock bound), whichever comes first.

Whoever asked for a transcript always gets one: every refusal is an ``error`` event followed by an empty
``transcript``, or Home Assistant would wait for it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edge_agent.audio.convert import SpeechStream
from edge_agent.client.schemas import BYTES_PER_SECOND
from edge_agent.errors import HearthError, InvalidAudioError, NoRouteError
from edge_agent.supervision import Supervisor
from edge_agent.voice.settings import WyomingLimits
from edge_agent.voice.transcript import Transcriber, TranscriptPiece
from edge_agent.voice.wyoming_server.protocol import (
    AudioFormat,
    ClientGone,
    Refused,
    audio_format,
    close,
    linger_close,
    read_event,
    shown,
    transcribe_data,
    write,
)

with warnings.catch_warnings():
    # wyoming.audio imports the stdlib audioop (deprecated on 3.11-3.12; we never call it).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.error import Error
    from wyoming.event import Event
    from wyoming.info import Describe, Info
    from wyoming.ping import Ping, Pong

log = logging.getLogger("edge_agent.voice.wyoming_server")

UTTERANCE_WALL_FACTOR, UTTERANCE_SLACK_S = 2.0, 5.0
"""After audio-start, audio-stop must come within 2 x max_seconds + 5 s (a microphone streams in real
time): a client trickling a byte now and then cannot hold its slot for ever."""


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs from its server (read when the connection is taken)."""

    transcriber: Transcriber
    info: Info
    languages: list[str]
    limits: WyomingLimits
    """The utterance bound, idle and hold times, ignored events, drain time (`voice.settings`): Home
    Assistant asks ``describe`` on a connection of its own and closes it, and starts an utterance's
    audio at once, so pings do not count as activity past the hold time."""
    supervisor: Supervisor


class Session:
    """One client connection: at most one utterance, then closed."""

    def __init__(
        self,
        settings: SessionSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self.settings, self.reader, self.writer, self.peer = settings, reader, writer, peer
        self.language = settings.languages[0] if settings.languages else "en"
        self.requested = False
        """A transcript is owed: ``transcribe`` or ``audio-start`` came."""
        self.format: AudioFormat | None = None
        self.converter: SpeechStream | None = None
        self.pcm = bytearray()
        self.ignored = 0
        self.max_bytes = int(settings.limits.max_seconds * BYTES_PER_SECOND)
        self.deadline = time.monotonic() + settings.limits.hold_s
        """When this connection's slot is up unless its utterance moves on (audio-start resets it)."""
        hold = settings.limits.hold_s
        self.deadline_why = f"no audio within {hold:g} s of connecting (pings do not keep it open)"

    async def run(self) -> None:
        try:
            try:
                await self._converse()
            except Refused as refusal:
                await self._refuse(refusal)
            await close(self.writer)
        except asyncio.CancelledError:  # the server is closing
            self.writer.transport.abort()
            raise
        except (ClientGone, ConnectionError, OSError) as exc:
            log.debug("wyoming %s: the client went away (%s)", self.peer, exc or type(exc).__name__)
            self.writer.transport.abort()
        except Exception as exc:  # our bug, not the client's: dropped and counted, the server runs on
            what = f"wyoming {self.peer}: the connection failed inside Hearth"
            self.settings.supervisor.drop("wyoming", type(exc).__name__, exc, what)
            self.writer.transport.abort()

    async def _refuse(self, refusal: Refused) -> None:
        log.warning("wyoming %s: %s (%s)", self.peer, refusal.text, refusal.code)
        await write(self.writer, Error(text=refusal.text, code=refusal.code).event())
        if self.requested:
            await write(self.writer, Transcript(text="", language=self.language).event())
        if refusal.drain:
            await self._drain()
        else:
            await linger_close(self.reader, self.writer)

    async def _drain(self) -> None:
        """The rest of a refused utterance, read and dropped (bounded), so the client can finish sending
        and read our answer; then the connection closes."""
        try:
            async with asyncio.timeout(self.settings.limits.drain_s):
                while (event := await read_event(self.reader)) is not None and not AudioStop.is_type(
                    event.type
                ):
                    pass
        except (Refused, TimeoutError):
            pass

    async def _next_event(self) -> Event | None:
        """The next event within the idle timeout, and before the connection's deadline (the hold
        before audio starts, then the utterance's wall-clock bound): whichever comes first."""
        idle = self.settings.limits.idle_timeout_s
        left = self.deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, min(idle, left))):
                return await read_event(self.reader)
        except TimeoutError:
            if left < idle:
                raise Refused("timeout", f"{self.deadline_why}; closing the connection") from None
            raise Refused("timeout", f"no event for {idle:g} s; closing the connection") from None

    # -- the conversation -----------------------------------------------------------------------------

    async def _converse(self) -> None:
        while (event := await self._next_event()) is not None:
            kind = event.type
            if Describe.is_type(kind):
                await write(self.writer, self.settings.info.event())
            elif Ping.is_type(kind):
                echo = event.data.get("text")
                await write(self.writer, Pong(text=echo if isinstance(echo, str) else None).event())
            elif Transcribe.is_type(kind):
                self._on_transcribe(event)
            elif AudioStart.is_type(kind):
                self._on_audio_start(event)
            elif AudioChunk.is_type(kind):
                self._on_audio_chunk(event)
            elif AudioStop.is_type(kind):
                if self.converter is None:
                    raise Refused("unexpected-event", "audio-stop before audio-start")
                tail = self.converter.finish()  # the resampler's last few ms: never refused for them
                self.pcm += tail[: max(0, self.max_bytes - len(self.pcm))]
                await self._transcribe()
                return  # one utterance per connection
            else:
                self.ignored += 1
                if self.ignored > self.settings.limits.max_ignored_events:
                    limit = self.settings.limits.max_ignored_events
                    raise Refused("bad-event", f"more than {limit} unknown events")
                log.info("wyoming %s: ignored an unknown event %s", self.peer, shown(kind))
        if self.requested:
            log.info("wyoming %s: the client left before audio-stop", self.peer)

    def _on_transcribe(self, event: Event) -> None:
        if self.converter is not None:
            raise Refused("unexpected-event", "transcribe after audio-start")
        asked = transcribe_data(event)
        self.requested = True
        if asked.language:
            base = asked.language.replace("_", "-").split("-", 1)[0].lower()
            if base not in self.settings.languages:
                raise Refused(
                    "unsupported-language",
                    f"language {shown(asked.language)} is not served here "
                    f"(only {', '.join(self.settings.languages)})",
                    drain=True,
                )
            self.language = base

    def _on_audio_start(self, event: Event) -> None:
        if self.converter is not None:
            raise Refused("unexpected-event", "a second audio-start in one connection")
        self.requested = True
        self.format = audio_format(event, "audio-start")
        self.converter = SpeechStream(self.format.rate, self.format.width, self.format.channels)
        wall = UTTERANCE_WALL_FACTOR * self.settings.limits.max_seconds + UTTERANCE_SLACK_S
        self.deadline = time.monotonic() + wall
        self.deadline_why = f"the utterance's audio took over {wall:g} s to arrive"

    def _on_audio_chunk(self, event: Event) -> None:
        if self.converter is None or self.format is None:
            raise Refused("unexpected-event", "audio-chunk before audio-start")
        fmt = audio_format(event, "audio-chunk")
        if fmt != self.format:
            raise Refused("bad-audio", f"an audio-chunk in {fmt}, after audio-start said {self.format}")
        audio = event.payload or b""
        seconds_in = len(audio) / (fmt.rate * fmt.width * fmt.channels)
        if len(self.pcm) / BYTES_PER_SECOND + seconds_in > self.settings.limits.max_seconds + 0.01:
            self._too_long()
        self._append(self.converter.convert(audio))

    def _append(self, pcm: bytes) -> None:
        if len(self.pcm) + len(pcm) > self.max_bytes:
            self._too_long()
        self.pcm += pcm

    def _too_long(self) -> None:
        self.pcm = bytearray()
        raise Refused(
            "audio-too-long",
            f"the utterance passed {self.settings.limits.max_seconds:g} s, the most this server takes",
            drain=True,
        )

    async def _transcribe(self) -> None:
        """The recording to the transcriber; its pieces streamed as they come, then the whole text. Any
        failure is an error event and an empty transcript: the client always gets its transcript."""
        pcm, self.pcm = bytes(self.pcm), bytearray()
        started = time.perf_counter()
        await write(self.writer, TranscriptStart(language=self.language).event())
        texts: list[str] = []
        failure: tuple[str, str] | None = None
        pieces: AsyncIterator[TranscriptPiece] | None = None
        try:
            pieces = self.settings.transcriber.transcribe_pcm(pcm, language=self.language)
            async for piece in pieces:
                text = piece.text.strip()
                if text:  # delta text: the chunks joined are the whole transcript
                    await write(self.writer, TranscriptChunk(text=f" {text}" if texts else text).event())
                    texts.append(text)
                if piece.final:
                    break
        except ClientGone:
            raise
        except InvalidAudioError as exc:
            failure = ("invalid-audio", str(exc))
        except NoRouteError as exc:
            failure = ("no-route", str(exc))
        except HearthError as exc:
            failure = ("transcription-failed", str(exc))
        except Exception as exc:  # our bug: counted (the agent's health), answered, the server runs on
            what = f"wyoming {self.peer}: the transcription failed inside Hearth"
            self.settings.supervisor.drop("wyoming", type(exc).__name__, exc, what)
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
            await write(self.writer, Error(text=text, code=code).event())
            texts = []
        else:
            log.info("wyoming %s: transcribed %.1f s of audio in %.0f ms (%d characters)", self.peer, seconds,
                     (time.perf_counter() - started) * 1000, sum(len(t) for t in texts))  # fmt: skip
        await write(self.writer, Transcript(text=" ".join(texts), language=self.language).event())
        await write(self.writer, TranscriptStop().event())
