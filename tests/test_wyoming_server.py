"""The Wyoming server as Home Assistant's Assist meets it: a real `wyoming` client (the library Home
Assistant's integration uses) against a real server on an ephemeral loopback port, real espeak-ng speech
as the audio, and a real python-zeroconf browser for the advert.

The transcriber here is `StandInTranscriber`, a protocol-level stand-in and no speech recognition: it
describes the PCM it received (one piece per second of audio), so the tests prove that the audio arrived
intact and converted, and that pieces stream out in order. Hearth's real pipeline (`VoicePipeline`: VAD
+ Whisper on the mesh) is to replace it in integration/tests/test_wyoming_assist.py once `hearth run`
serves Wyoming ([voice] wyoming = true).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import math
import os
import re
import subprocess
import warnings
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.rigs.speech import speak
from edge_agent.audio.convert import SpeechStream
from edge_agent.config import VoiceSection
from edge_agent.discovery.advertiser import AdvertiserState
from edge_agent.errors import HearthError, InvalidAudioError, NoRouteError
from edge_agent.supervision import Supervisor
from edge_agent.voice.settings import WyomingLimits
from edge_agent.voice.transcript import TranscriptPiece, joined_text
from edge_agent.voice.wyoming_advert import SERVICE_TYPE, advert_addresses, instance_label, should_advertise
from edge_agent.voice.wyoming_server import WHISPER_TINY_EN, WyomingServer, WyomingServerState
from edge_agent.voice.wyoming_server import session as wyoming_session

with warnings.catch_warnings():  # wyoming.audio imports audioop, deprecated on Python 3.11-3.12
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.error import Error
    from wyoming.event import Event, async_read_event, async_write_event
    from wyoming.info import Describe, Info
    from wyoming.ping import Ping, Pong

pytestmark = pytest.mark.timeout(120)

WAIT_S = 30.0
"""Bound on any one expected event; the tests wait on the events themselves, never on time."""
LOG = "edge_agent.voice.wyoming_server"
SENTENCE = "Turn off the kitchen lights."
WINDOW = 16_000
"""The stand-in's window: one piece per second of 16 kHz audio."""


class StandInTranscriber:
    """Implements `Transcriber` for protocol tests: no recognition; it keeps the PCM it received and
    yields one piece per second of it (text: that window's sample count), the last one final. Empty
    audio is refused as the real pipeline refuses it."""

    def __init__(self, fail: HearthError | Exception | None = None, fail_after: int = 0) -> None:
        self.received: list[tuple[bytes, str]] = []
        self.fail, self.fail_after = fail, fail_after
        self.closed = 0
        """Pieces iterations closed (the server always closes them, even when it stops early)."""

    async def transcribe_pcm(self, pcm: bytes, *, language: str = "en") -> AsyncIterator[TranscriptPiece]:
        self.received.append((pcm, language))
        try:
            samples = len(pcm) // 2
            if samples == 0:
                raise InvalidAudioError("the recording is empty: no audio to transcribe")
            windows = math.ceil(samples / WINDOW)
            for i in range(windows):
                if self.fail is not None and i == self.fail_after:
                    raise self.fail
                n = min(WINDOW, samples - i * WINDOW)
                yield TranscriptPiece(index=i, text=f"window {i} has {n} samples", served_by="local",
                                      final=i == windows - 1)  # fmt: skip
        finally:
            self.closed += 1


def expected_pieces(samples: int) -> list[str]:
    windows = math.ceil(samples / WINDOW)
    return [f"window {i} has {min(WINDOW, samples - i * WINDOW)} samples" for i in range(windows)]


@contextlib.asynccontextmanager
async def serving(transcriber: Any = None, **options: Any) -> AsyncIterator[WyomingServer]:
    limits = WyomingLimits(**{k: options.pop(k) for k in list(options) if k in WyomingLimits.model_fields})
    server = WyomingServer(transcriber or StandInTranscriber(), port=0, name="Hearth test", limits=limits,
                           **options)  # fmt: skip
    async with server:
        yield server
    assert server.state is WyomingServerState.CLOSED


# -- audio ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real speech: espeak-ng, 16 kHz mono s16 (what Home Assistant sends)."""
    return speak(SENTENCE, tmp_path_factory.mktemp("speech") / "lights.wav")


def encoded(speech: Path, rate: int, bits: int, channels: int) -> bytes:
    """The same speech as another client might send it: raw PCM at ``rate``, ``bits`` (8-bit unsigned,
    as in WAV; wider signed) and ``channels`` (sox's HQ resampler; -R: the same bytes every run)."""
    out = speech.with_name(f"{speech.stem}-{rate}-{bits}-{channels}.raw")
    encoding = "unsigned-integer" if bits == 8 else "signed-integer"
    subprocess.run(["sox", "-R", str(speech), "-t", "raw", "-e", encoding, "-b", str(bits), "-r", str(rate),
                    "-c", str(channels), str(out)], check=True)  # fmt: skip
    return out.read_bytes()


def same_speech(received: bytes, speech: Path, min_correlation: float, max_level_db: float = 0.05) -> None:
    """``received`` (16 kHz mono s16) is ``speech`` again: correlated, at the same level."""
    original, got = samples_of(frames(speech)[0]), samples_of(received)
    n = min(len(original), len(got))
    assert abs(len(original) - len(got)) <= 1
    assert np.corrcoef(original[:n], got[:n])[0, 1] > min_correlation
    level_db = 20 * math.log10(np.sqrt(np.mean(got[:n] ** 2)) / np.sqrt(np.mean(original[:n] ** 2)))
    assert abs(level_db) < max_level_db  # channels averaged, not summed (summing equal channels is +6 dB)


def frames(path: Path) -> tuple[bytes, int, int, int]:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate(), w.getsampwidth(), w.getnchannels()


def samples_of(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, "<i2").astype(np.float64)


def audio_events(pcm: bytes, rate: int, width: int, channels: int, chunk_frames: int = 1024) -> list[Event]:
    step = chunk_frames * width * channels
    chunks = [AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step]).event()
              for i in range(0, len(pcm), step)]  # fmt: skip
    return [AudioStart(rate=rate, width=width, channels=channels).event(), *chunks, AudioStop().event()]


# -- clients --------------------------------------------------------------------------------------------


async def until_closed(client: AsyncTcpClient) -> list[Event]:
    """Every event the server sends until it closes the connection."""
    seen: list[Event] = []
    async with asyncio.timeout(WAIT_S):
        while (event := await client.read_event()) is not None:
            seen.append(event)
    return seen


async def transcribe(server: WyomingServer, pcm: bytes, fmt: tuple[int, int, int] = (16000, 2, 1),
                     language: str | None = "en", chunk_frames: int = 1024) -> list[Event]:  # fmt: skip
    async with AsyncTcpClient("127.0.0.1", server.port) as client:
        if language is not None:
            await client.write_event(Transcribe(language=language).event())
        for event in audio_events(pcm, *fmt, chunk_frames=chunk_frames):
            await client.write_event(event)
        return await until_closed(client)


@contextlib.asynccontextmanager
async def raw(server: WyomingServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def raw_until_closed(reader: asyncio.StreamReader) -> list[Event]:
    seen: list[Event] = []
    async with asyncio.timeout(WAIT_S):
        while (event := await async_read_event(reader)) is not None:
            seen.append(event)
    return seen


def kinds(events: Sequence[Event]) -> list[str]:
    return [e.type for e in events]


def error(code: str, text: str) -> Event:
    return Error(text=text, code=code).event()


def empty_transcript() -> Event:
    return Transcript(text="", language="en").event()


async def a_good_client_is_served(server: WyomingServer, speech: Path) -> None:
    """The server still answers a well-behaved client in full."""
    pcm, *fmt = frames(speech)
    events = await transcribe(server, pcm, (fmt[0], fmt[1], fmt[2]))
    assert events[-2] == Transcript(text=" ".join(expected_pieces(len(pcm) // 2)), language="en").event()


def client_mistake_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """One warning line naming the problem, and never a traceback for a client's mistake."""
    ours = [r for r in caplog.records if r.name == LOG]
    assert any(r.levelno == logging.WARNING and text in r.getMessage() for r in ours), [
        r.getMessage() for r in ours
    ]
    assert not [r for r in ours if r.exc_info], "a client's mistake logged a traceback"


# -- describe -------------------------------------------------------------------------------------------


async def test_describe_answers_with_the_program_and_its_whisper_model() -> None:
    async with serving() as server, AsyncTcpClient("127.0.0.1", server.port) as client:
        await client.write_event(Describe().event())
        async with asyncio.timeout(WAIT_S):
            event = await client.read_event()
        assert event is not None and Info.is_type(event.type)
        info = Info.from_event(event)
        assert len(info.asr) == 1 and not (info.tts or info.wake or info.handle or info.intent)
        program = info.asr[0]
        assert (program.name, program.installed, program.attribution.name) == ("Hearth test", True, "Hearth")
        assert program.supports_transcript_streaming  # a transcript-chunk per window, as each is done
        assert program.requires_external_vad  # the client's audio-stop ends the utterance
        (model,) = program.models
        assert (model.name, model.languages, model.installed) == ("whisper-tiny.en", ["en"], True)
        assert (model.attribution.name, model.attribution.url) == (
            "OpenAI",
            "https://github.com/openai/whisper",
        )
        assert model.version == WHISPER_TINY_EN.version and "MIT" in (model.description or "")
        # the connection stays open for more (Home Assistant closes it itself)
        await client.write_event(Ping(text="still there?").event())
        async with asyncio.timeout(WAIT_S):
            pong = await client.read_event()
        assert pong == Pong(text="still there?").event()


# -- transcription --------------------------------------------------------------------------------------


async def test_a_transcription_streams_each_piece_then_the_whole_text(speech: Path) -> None:
    """22.05 kHz stereo in: the transcriber gets 16 kHz mono, the same speech; the client gets
    transcript-start, a transcript-chunk per piece (in order), the whole transcript, transcript-stop."""
    standin = StandInTranscriber()
    pcm22 = encoded(speech, 22050, 16, 2)
    async with serving(standin) as server:
        events = await transcribe(server, pcm22, (22050, 2, 2))

    ((received, language),) = standin.received
    assert language == "en"
    # soxr's stream, flushed at audio-stop, yields round(n * 16000 / 22050) samples (measured over the 32
    # utterances of benchmarks/rigs/speech.py: at most 0.36 samples from the exact ratio)
    assert abs(len(received) // 2 - len(pcm22) // 4 * 16000 / 22050) <= 0.5
    same_speech(received, speech, 0.9995)  # measured over the 32: correlation >= 0.99995, level 0.001 dB

    pieces = expected_pieces(len(received) // 2)
    assert len(pieces) >= 2  # the sentence is over a second long: more than one piece to stream
    chunks = [pieces[0], *(f" {p}" for p in pieces[1:])]  # delta text: joined, they are the whole text
    assert events == [
        TranscriptStart(language="en").event(),
        *(TranscriptChunk(text=c).event() for c in chunks),
        Transcript(text="".join(chunks), language="en").event(),
        TranscriptStop().event(),
    ]
    assert "".join(chunks) == joined_text(
        [TranscriptPiece(index=0, text=p, served_by="local") for p in pieces]
    )


@pytest.mark.parametrize(
    ("rate", "bits", "channels", "min_correlation", "max_level_db"),
    [(16000, 8, 1, 0.995, 0.05), (16000, 24, 2, 0.9995, 0.05), (32000, 32, 1, 0.9995, 0.05),
     (44100, 16, 2, 0.9995, 0.05), (48000, 16, 1, 0.9995, 0.05), (96000, 24, 2, 0.9995, 0.05),
     (8000, 16, 1, 0.96, 0.35)],
)  # fmt: skip
async def test_any_common_format_reaches_the_transcriber_as_the_same_speech(
    speech: Path, rate: int, bits: int, channels: int, min_correlation: float, max_level_db: float
) -> None:
    """Bounds from the 32 utterances of benchmarks/rigs/speech.py (sentence x voice), measured: correlation
    >= 0.99995 and level within 0.0012 dB where nothing is lost; 0.99876 and 0.013 dB for 8-bit (its
    quantisation noise); 0.9695 and 0.27 dB at 8 kHz (the band above 4 kHz is gone)."""
    standin = StandInTranscriber()
    async with serving(standin) as server:
        await transcribe(server, encoded(speech, rate, bits, channels), (rate, bits // 8, channels))
    same_speech(standin.received[0][0], speech, min_correlation, max_level_db)


async def test_a_client_before_wyoming_17_reads_its_transcript_and_leaves(
    speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Home Assistant 2025.4's own loop (wyoming 1.5.4): it reads events until a `transcript`, ignoring
    the others, then closes. 16 kHz mono s16 reaches the transcriber byte for byte."""
    standin = StandInTranscriber()
    pcm, rate, width, channels = frames(speech)
    caplog.set_level(logging.DEBUG, LOG)
    async with serving(standin) as server:
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(Transcribe(language="en").event())
            for event in audio_events(pcm, rate, width, channels):
                await client.write_event(event)
            async with asyncio.timeout(WAIT_S):
                while (event := await client.read_event()) is not None and not Transcript.is_type(event.type):
                    pass
        assert event is not None
        text = Transcript.from_event(event).text
    assert standin.received == [(pcm, "en")]
    assert text == " ".join(expected_pieces(len(pcm) // 2))
    assert not [r for r in caplog.records if r.name == LOG and r.levelno >= logging.WARNING]


async def test_the_language_asked_reaches_the_transcriber_and_a_missing_one_defaults(speech: Path) -> None:
    standin = StandInTranscriber()
    pcm, *fmt = frames(speech)
    async with serving(standin) as server:
        await transcribe(server, pcm, (fmt[0], fmt[1], fmt[2]), language="en-US")
        await transcribe(server, pcm, (fmt[0], fmt[1], fmt[2]), language=None)  # transcribe is optional
    assert [language for _, language in standin.received] == ["en", "en"]


@pytest.mark.parametrize(
    ("failure", "fail_after", "code", "text"),
    [
        (NoRouteError("no device may transcribe (policy never_offload)"), 1, "no-route",
         "no device may transcribe (policy never_offload)"),
        (HearthError("the peer's pack is corrupt"), 0, "transcription-failed", "the peer's pack is corrupt"),
    ],
)  # fmt: skip
async def test_a_failed_transcription_is_an_error_and_an_empty_transcript(
    speech: Path,
    failure: HearthError,
    fail_after: int,
    code: str,
    text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever was streamed, the final transcript is empty (a half-heard command must not run)."""
    standin = StandInTranscriber(failure, fail_after)
    pcm, *fmt = frames(speech)
    async with serving(standin) as server:
        events = await transcribe(server, pcm, (fmt[0], fmt[1], fmt[2]))
    streamed = [TranscriptChunk(text=expected_pieces(len(pcm) // 2)[0]).event()] if fail_after else []
    start, stop = TranscriptStart(language="en").event(), TranscriptStop().event()
    assert events == [start, *streamed, error(code, text), empty_transcript(), stop]
    assert standin.closed == 1
    client_mistake_logged(caplog, text)  # one line, no traceback: it is not our bug


async def test_empty_audio_is_refused_by_the_transcriber_as_invalid_audio() -> None:
    async with serving() as server:
        events = await transcribe(server, b"")
    assert events == [
        TranscriptStart(language="en").event(),
        error("invalid-audio", "the recording is empty: no audio to transcribe"),
        empty_transcript(),
        TranscriptStop().event(),
    ]


async def test_a_bug_in_the_transcriber_is_logged_with_its_traceback_counted_and_answered(
    speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pcm, *fmt = frames(speech)
    async with serving(StandInTranscriber(ZeroDivisionError("boom"))) as server:
        events = await transcribe(server, pcm, (fmt[0], fmt[1], fmt[2]))
        assert server.supervisor.drops("wyoming") == {"ZeroDivisionError": 1}  # the agent's health shows it
    assert kinds(events) == ["transcript-start", "error", "transcript", "transcript-stop"]
    assert events[1].data["code"] == "internal-error" and events[2] == empty_transcript()
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records
               if r.name == "edge_agent.supervision")  # fmt: skip


# -- hostile and broken clients -------------------------------------------------------------------------


def _header(**fields: Any) -> bytes:
    return json.dumps(fields).encode() + b"\n"


@pytest.mark.parametrize(
    ("sent", "code", "text"),
    [
        (b"this is not json\n", "bad-event", "an event header is not a JSON line"),
        (b"\xff\xfe{}\n", "bad-event", "an event header is not a JSON line"),
        (b"[" * 10_000 + b"\n", "bad-event", "an event header is not a JSON line"),  # nesting past recursion
        (b'{"type": "describe"' + b" " * (100 << 10), "bad-event",
         "an event header is longer than 16384 bytes"),
        (b"[1, 2]\n", "bad-event", "an event header is not a JSON object"),
        (_header(data={}), "bad-event", "bad event header: type: Field required"),
        (_header(type=7), "bad-event", "bad event header: type: Input should be a valid string"),
        (_header(type="audio-chunk", payload_length=5 << 20), "bad-event",
         "bad event header: payload_length: Input should be less than or equal to 4194304"),
        (_header(type="transcribe", data_length=2) + b"[]", "bad-event",
         "event 'transcribe': its data is not a JSON object"),
        (_header(type="describe", payload_length=10) + b"short", "bad-event",
         "the connection ended inside event 'describe'"),
        (_header(type="audio-chunk", data={"rate": 16000, "width": 2, "channels": 1}, payload_length=2)
         + b"\0\0", "unexpected-event", "audio-chunk before audio-start"),
        (_header(type="audio-stop"), "unexpected-event", "audio-stop before audio-start"),
        (_header(type="audio-start", data={"rate": 4000, "width": 2, "channels": 1}), "bad-audio",
         "bad audio-start: rate: Input should be greater than or equal to 8000"),
        (_header(type="audio-start", data={"rate": 16000, "width": 2, "channels": 6}), "bad-audio",
         "bad audio-start: channels: Input should be less than or equal to 2"),
        (_header(type="audio-start", data={"rate": "16000", "width": 2, "channels": 1}), "bad-audio",
         "bad audio-start: rate: Input should be a valid integer"),
        (b"".join(_header(type=f"future-{i}") for i in range(17)), "bad-event",
         "more than 16 unknown events"),
    ],
)  # fmt: skip
async def test_malformed_input_is_refused_the_connection_closed_and_the_server_serves_on(
    speech: Path, sent: bytes, code: str, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    standin = StandInTranscriber()
    async with serving(standin) as server:
        async with raw(server) as (reader, writer):
            writer.write(sent)
            if b'"payload_length": 10' in sent:
                writer.write_eof()  # the payload promised never comes
            events = await raw_until_closed(reader)
        owed = [empty_transcript()] if b'"audio-start"' in sent else []  # audio-start asks for a transcript
        assert events == [error(code, text), *owed]
        client_mistake_logged(caplog, text)
        await a_good_client_is_served(server, speech)
    assert len(standin.received) == 1  # only the good client's audio


async def test_a_mistake_after_transcribe_still_gets_the_owed_empty_transcript(speech: Path) -> None:
    async with serving() as server:
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0").event())
            events = await until_closed(client)
        assert events == [error("unexpected-event", "audio-chunk before audio-start"), empty_transcript()]
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=44100, width=2, channels=1, audio=b"\0\0").event())
            events = await until_closed(client)
        assert events == [
            error("bad-audio", "an audio-chunk in 44100 Hz, 16 bit, 1 channel(s), after audio-start said "
                               "16000 Hz, 16 bit, 1 channel(s)"),
            empty_transcript(),
        ]  # fmt: skip
        await a_good_client_is_served(server, speech)


async def split_like_aiohttp(server: WyomingServer, audio: bytes, rate: int, channels: int) -> None:
    lines = io.BytesIO(audio).readlines()  # what `async for chunk in request.content` yields
    assert len(lines) > 100 and any(len(line) % (2 * channels) for line in lines)
    async with AsyncTcpClient("127.0.0.1", server.port) as client:
        await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
        for line in lines:
            await client.write_event(AudioChunk(rate=rate, width=2, channels=channels, audio=line).event())
        await client.write_event(AudioStop().event())
        assert kinds(await until_closed(client))[-2:] == ["transcript", "transcript-stop"]


async def test_chunks_split_mid_frame_are_put_back_together(speech: Path) -> None:
    """Home Assistant's STT API forwards its HTTP body as aiohttp iterates it, line by line: chunks end
    after any 0x0A byte, mid-sample. Frames cut between chunks are joined again; a trailing part of a
    frame (under one sample) is dropped."""
    pcm, *_ = frames(speech)
    stereo = encoded(speech, 22050, 16, 2)
    split, whole = StandInTranscriber(), StandInTranscriber()
    async with serving(split) as server:
        await split_like_aiohttp(server, pcm, 16000, 1)
        await split_like_aiohttp(server, stereo + b"\x01", 22050, 2)
    async with serving(whole) as server:
        await transcribe(server, stereo, (22050, 2, 2))
    assert split.received[0][0] == pcm  # byte for byte
    assert split.received[1][0] == whole.received[0][0]  # resampled alike, whatever the chunking


async def test_unknown_events_are_dropped_and_the_utterance_still_served(speech: Path) -> None:
    """The protocol asks servers to drop what they do not know (newer clients send e.g. select-program)."""
    pcm, *fmt = frames(speech)
    async with serving() as server, AsyncTcpClient("127.0.0.1", server.port) as client:
        await client.write_event(Event(type="select-program", data={"name": "Hearth test"}))
        await client.write_event(Event(type="future-thing", payload=b"\1\2\3"))
        await client.write_event(Transcribe(language="en").event())
        for event in audio_events(pcm, fmt[0], fmt[1], fmt[2]):
            await client.write_event(event)
        events = await until_closed(client)
    assert events[-2] == Transcript(text=" ".join(expected_pieces(len(pcm) // 2)), language="en").event()


async def test_audio_past_max_seconds_is_refused_and_never_transcribed(
    speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The buffer is bounded: past max_seconds the client gets an error and an empty transcript at once,
    the rest of its audio is read and dropped until audio-stop."""
    standin = StandInTranscriber()
    tone = (np.sin(np.arange(24_000) * 2 * np.pi * 440 / 16_000) * 8000).astype("<i2").tobytes()  # 1.5 s
    async with serving(standin, max_seconds=1.0) as server:
        events = await transcribe(server, tone, chunk_frames=1600)
        assert events == [error("audio-too-long", "the utterance passed 1 s, the most this server takes"),
                          empty_transcript()]  # fmt: skip
        client_mistake_logged(caplog, "the utterance passed 1 s")
        exactly = tone[: 16_000 * 2]  # at the bound is still accepted
        events = await transcribe(server, exactly, chunk_frames=1600)
        assert events[-2] == Transcript(text="window 0 has 16000 samples", language="en").event()
    assert standin.received == [(exactly, "en")]


async def test_a_language_the_models_lack_is_refused(speech: Path) -> None:
    standin = StandInTranscriber()
    pcm, *fmt = frames(speech)
    async with serving(standin) as server:
        events = await transcribe(server, pcm, (fmt[0], fmt[1], fmt[2]), language="de")
        await a_good_client_is_served(server, speech)
    assert events == [error("unsupported-language", "language 'de' is not served here (only en)"),
                      Transcript(text="", language="en").event()]  # fmt: skip
    assert len(standin.received) == 1


async def test_a_stalled_client_blocks_nobody(speech: Path) -> None:
    """Half a header, then nothing: the others are served meanwhile; the staller is cut off when idle."""
    async with serving(idle_timeout_s=60) as server, raw(server) as (reader, writer):
        writer.write(b'{"type": "transcr')
        await writer.drain()
        for _ in range(3):
            await a_good_client_is_served(server, speech)
        assert not reader.at_eof()


async def test_an_idle_client_is_told_and_closed() -> None:
    async with serving(idle_timeout_s=0.5) as server, raw(server) as (reader, _):
        events = await raw_until_closed(reader)
    assert events == [error("timeout", "no event for 0.5 s; closing the connection")]


async def test_connections_past_the_bound_are_turned_away(speech: Path) -> None:
    async with serving(max_connections=1) as server, AsyncTcpClient("127.0.0.1", server.port) as first:
        await first.write_event(Describe().event())
        async with asyncio.timeout(WAIT_S):
            info = await first.read_event()
        assert info is not None and Info.is_type(info.type)  # the first connection holds the only slot
        async with AsyncTcpClient("127.0.0.1", server.port) as second:
            await second.write_event(Describe().event())
            turned_away = await until_closed(second)
        assert turned_away == [
            error("busy", "busy: 1 Wyoming connections are already open here; try again later")
        ]
        pcm, *fmt = frames(speech)
        await first.write_event(Transcribe(language="en").event())
        for event in audio_events(pcm, fmt[0], fmt[1], fmt[2]):
            await first.write_event(event)
        assert kinds(await until_closed(first))[-2:] == ["transcript", "transcript-stop"]


# -- N6: nobody holds the server (issue 21) --------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_from(
    server: WyomingServer, source: str
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection from another loopback address (127.0.0.0/8 is all this host's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def described(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The connection holds a slot: the server answered its describe."""
    await async_write_event(Describe().event(), writer)
    async with asyncio.timeout(WAIT_S):
        info = await async_read_event(reader)
    assert info is not None and Info.is_type(info.type)


async def served_from(server: WyomingServer, source: str, speech: Path) -> None:
    """A whole utterance from ``source``, answered in full."""
    pcm, *fmt = frames(speech)
    async with raw_from(server, source) as (reader, writer):
        for event in audio_events(pcm, fmt[0], fmt[1], fmt[2]):
            await async_write_event(event, writer)
        events = await raw_until_closed(reader)
    assert events[-2] == Transcript(text=" ".join(expected_pieces(len(pcm) // 2)), language="en").event()


async def test_pings_do_not_hold_a_connection_past_the_hold(
    speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that only pings (each answered at once, never idle) is closed once the hold is up."""
    standin = StandInTranscriber()
    async with serving(standin, hold_s=0.5) as server:
        pongs = 0
        async with raw(server) as (reader, writer):
            async with asyncio.timeout(WAIT_S):  # before the fix: pong after pong, for ever
                while True:
                    await async_write_event(Ping(text="still here").event(), writer)
                    event = await async_read_event(reader)
                    if event is None or not Pong.is_type(event.type):
                        break
                    pongs += 1
            assert pongs > 0
            assert event == error(
                "timeout",
                "no audio within 0.5 s of connecting (pings do not keep it open); closing the connection",
            )
            assert await raw_until_closed(reader) == []
        client_mistake_logged(caplog, "no audio within 0.5 s of connecting")
        await a_good_client_is_served(server, speech)  # the server serves on, nothing restarted
        assert server.supervisor.restarts("wyoming") == 0 and not server.supervisor.drops("wyoming")
    assert len(standin.received) == 1  # only the good client's audio


async def test_a_trickled_utterance_is_cut_at_its_wall_clock_bound(
    speech: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audio that keeps coming but never ends (empty chunks, so never too long either) is cut once the
    utterance has had twice its longest duration: audio-start + 2 x max_seconds (+ slack, 0 here)."""
    monkeypatch.setattr(wyoming_session, "UTTERANCE_SLACK_S", 0.0)
    standin = StandInTranscriber()
    async with serving(standin, max_seconds=0.25) as server:
        async with raw(server) as (reader, writer):

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError):
                    await async_write_event(AudioStart(rate=16000, width=2, channels=1).event(), writer)
                    while True:  # empty chunks: activity, never audio
                        empty = AudioChunk(rate=16000, width=2, channels=1, audio=b"")
                        await async_write_event(empty.event(), writer)

            sender = asyncio.create_task(trickle())
            try:
                events = await raw_until_closed(reader)  # before the fix: never closed
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        assert events == [
            error("timeout", "the utterance's audio took over 0.5 s to arrive; closing the connection"),
            empty_transcript(),
        ]
        assert standin.received == []  # nothing was transcribed for it
        exactly = (np.zeros(4000, "<i2")).tobytes()  # 0.25 s: at the bound, still taken
        events = await transcribe(server, exactly, chunk_frames=1000)
        assert events[-2] == Transcript(text="window 0 has 4000 samples", language="en").event()
        assert not server.sources  # every slot given back


async def test_more_than_a_command_of_audio_is_refused(speech: Path) -> None:
    """The default bound is one voice command (30 s), not 600 s: 31 s of audio is refused at 30 s."""
    standin = StandInTranscriber()
    async with serving(standin) as server:  # the defaults
        assert server.max_seconds == 30
        events = await transcribe(server, np.zeros(31 * 16000, "<i2").tobytes(), chunk_frames=16000)
        assert events == [error("audio-too-long", "the utterance passed 30 s, the most this server takes"),
                          empty_transcript()]  # fmt: skip
        await a_good_client_is_served(server, speech)
    assert len(standin.received) == 1


async def test_one_source_cannot_take_every_connection(
    speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    standin = StandInTranscriber()
    async with serving(standin, max_connections=4, max_per_source=2) as server:
        async with raw_from(server, "127.0.0.1") as first, raw_from(server, "127.0.0.1") as second:
            await described(*first)
            await described(*second)
            assert server.sources == {"127.0.0.1": 2}
            async with raw_from(server, "127.0.0.1") as (reader, _):
                turned_away = await raw_until_closed(reader)
            assert turned_away == [
                error(
                    "busy",
                    "busy: 2 Wyoming connections from 127.0.0.1 are already open here; try again later",
                )
            ]
            client_mistake_logged(caplog, "turned away, 2 connections from it already open")
            assert server.sources == {"127.0.0.1": 2}  # the refused one never held a slot
            await served_from(server, "127.0.0.2", speech)  # another address is served meanwhile
        assert await _until(lambda: not server.sources)  # slots given back as connections close
    assert len(standin.received) == 1


async def test_an_address_off_the_allow_list_is_refused(
    speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    standin = StandInTranscriber()
    allow = [ipaddress.ip_network("127.0.0.1/32")]
    async with serving(standin, allow=allow) as server:
        async with raw_from(server, "127.0.0.2") as (reader, writer):
            await async_write_event(Transcribe(language="en").event(), writer)
            for event in audio_events(frames(speech)[0], 16000, 2, 1):
                with contextlib.suppress(ConnectionError):
                    await async_write_event(event, writer)
            refused = await raw_until_closed(reader)
        assert refused == [
            error("forbidden", "127.0.0.2 may not use this Wyoming server (not in its allow-list: "
                               "[voice] wyoming_allow)")
        ]  # fmt: skip
        client_mistake_logged(caplog, "wyoming 127.0.0.2:")
        assert standin.received == [] and not server.sources  # nothing of it was heard or held
        await served_from(server, "127.0.0.1", speech)  # the listed address is served
    assert len(standin.received) == 1


async def test_the_listening_loop_is_supervised_and_listens_again(speech: Path) -> None:
    """The listening socket closed under the server (not by its own close): counted as a restart, and the
    server listens again on the same port."""
    async with serving() as server:
        port = server.port
        assert await _until(lambda: server.supervisor.report().loops)  # the loop is in serve_forever
        assert server._server is not None
        server._server.close()
        assert await _until(lambda: server.supervisor.restarts("wyoming") == 1)
        assert await _until(lambda: server._server is not None and server._server.is_serving())
        assert server.port == port
        await a_good_client_is_served(server, speech)
        report = server.supervisor.report()
        assert [(loop.name, loop.restarts, loop.last_error) for loop in report.loops] == [
            ("wyoming", 1, "RuntimeError: the listening socket was closed")
        ]


async def test_a_connection_that_fails_inside_hearth_is_dropped_and_counted(
    speech: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our bug on one connection (here: in the audio converter, and in taking a connection at all) ends
    that connection only: counted in the agent's health, the server serves the next client."""
    async with serving() as server:
        with monkeypatch.context() as bug:
            bug.setattr(SpeechStream, "convert", lambda self, audio: 1 / 0)
            with contextlib.suppress(ConnectionError):
                assert await transcribe(server, b"\0\0" * 1600) == []  # cut off, no answer: our bug
        with monkeypatch.context() as bug:
            bug.setattr(wyoming_session.Session, "__init__", lambda *a: [][1])
            async with raw(server) as (reader, _):
                with contextlib.suppress(ConnectionError):
                    assert await raw_until_closed(reader) == []
        assert server.supervisor.drops("wyoming") == {"ZeroDivisionError": 1, "IndexError": 1}
        assert server.supervisor.restarts("wyoming") == 0
        await a_good_client_is_served(server, speech)


async def _until(condition: Any, timeout: float = WAIT_S) -> bool:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
    return True


async def test_closing_the_server_ends_transcriptions_in_flight(speech: Path) -> None:
    started, never = asyncio.Event(), asyncio.Event()

    class Stuck(StandInTranscriber):
        async def transcribe_pcm(self, pcm: bytes, *, language: str = "en") -> AsyncIterator[TranscriptPiece]:
            started.set()
            try:
                await never.wait()
                yield TranscriptPiece(index=0, text="", served_by="local", final=True)
            finally:
                self.closed += 1

    stuck = Stuck()
    pcm, *fmt = frames(speech)
    client = AsyncTcpClient("127.0.0.1", 0)
    async with serving(stuck) as server:
        client.port = server.port
        await client.connect()
        await client.write_event(Transcribe(language="en").event())
        for event in audio_events(pcm, fmt[0], fmt[1], fmt[2]):
            await client.write_event(event)
        async with asyncio.timeout(WAIT_S):
            await started.wait()
    assert stuck.closed == 1  # the transcription was cancelled, its generator closed
    events: list[Event] = []
    with contextlib.suppress(ConnectionError):  # the server may reset the connection it cut
        events = await until_closed(client)
    assert "transcript" not in kinds(events)
    with contextlib.suppress(ConnectionError):
        await client.disconnect()


async def test_a_port_in_use_is_a_clear_error() -> None:
    async with serving() as server:
        with pytest.raises(
            HearthError, match=rf"cannot serve Wyoming on 127\.0\.0\.1:{server.port}: .*in use"
        ):
            async with WyomingServer(StandInTranscriber(), port=server.port):
                pass


# -- zeroconf -------------------------------------------------------------------------------------------


def test_the_voice_section_configures_the_server() -> None:
    voice = VoiceSection(wyoming=True, wyoming_host="0.0.0.0", wyoming_port=10301, wyoming_max_seconds=20,
                         wyoming_allow=["192.168.1.10", "fd00::/64"], wyoming_max_per_source=1)  # fmt: skip
    supervisor = Supervisor()
    server = WyomingServer.for_voice(
        voice.settings().wyoming, StandInTranscriber(), name="Hearth kitchen", supervisor=supervisor
    )
    assert (server.host, server.port, server.name, server.max_seconds, server.max_per_source) == (
        "0.0.0.0",
        10301,
        "Hearth kitchen",
        20,
        1,
    )
    assert [str(n) for n in server.allow] == ["192.168.1.10/32", "fd00::/64"]
    assert server.advertise and server.supervisor is supervisor  # "auto", bound beyond loopback
    default = WyomingServer.for_voice(VoiceSection(wyoming=True).settings().wyoming, StandInTranscriber())
    assert not default.advertise  # loopback
    # One voice command's worth of audio, not [voice] max_seconds (600 s, for files): 4 connections
    # hold at most 4 x 30 s of 16 kHz s16 (3.8 MB), not 77 MB.
    assert default.max_seconds == 30 and VoiceSection().max_seconds == 600
    assert [str(n) for n in default.allow] == ["127.0.0.0/8", "::1/128"]


def test_listening_beyond_loopback_needs_an_allow_list() -> None:
    from pydantic import ValidationError

    refusal = re.escape("wyoming_host = '0.0.0.0' listens beyond loopback, but wyoming_allow lets only "
                        "loopback clients in: list Home Assistant's address")  # fmt: skip
    with pytest.raises(ValidationError, match=refusal):
        VoiceSection(wyoming=True, wyoming_host="0.0.0.0")
    assert VoiceSection(wyoming=False, wyoming_host="0.0.0.0")  # not serving: nothing to lock
    assert VoiceSection(wyoming=True, wyoming_host="localhost")


def test_auto_advertises_only_beyond_loopback() -> None:
    assert not should_advertise("auto", "127.0.0.1") and not should_advertise("auto", "localhost")
    assert not should_advertise("auto", "::1") and should_advertise("auto", "0.0.0.0")
    assert should_advertise("auto", "192.168.1.5") and should_advertise("on", "127.0.0.1")
    assert not should_advertise("off", "0.0.0.0")


def test_the_advert_names_the_addresses_the_server_is_bound_to() -> None:
    lan = ["192.168.1.5", "fd00::5", "10.0.0.2"]
    assert advert_addresses(["127.0.0.1"], lambda: lan) == ["127.0.0.1"]
    assert advert_addresses(["0.0.0.0"], lambda: lan) == ["192.168.1.5", "10.0.0.2"]
    assert advert_addresses(["0.0.0.0", "::"], lambda: lan) == ["192.168.1.5", "10.0.0.2", "fd00::5"]
    assert advert_addresses(["192.168.1.5"], lambda: lan) == ["192.168.1.5"]


@pytest.mark.parametrize(
    ("name", "label"),
    [("Hearth", "Hearth"), ("kitchen.hub\\2", "kitchen-hub-2"), ("bad\x00name\x1b[31m", "bad name [31m"),
     ("  \t ", "Hearth"), ("é" * 40, "é" * 31)],
)  # fmt: skip
def test_instance_labels_fit_dns_sd(name: str, label: str) -> None:
    assert instance_label(name) == label and len(label.encode()) <= 63


async def test_the_server_is_advertised_over_zeroconf_and_says_goodbye(speech: Path) -> None:
    """A real python-zeroconf browser (Home Assistant's) on loopback sees the service, resolves it to the
    server's address and port, and sees it removed when the server stops."""
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    name = f"Hearth test {os.getpid()}"
    changes: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        changes.put_nowait((name, state_change))

    async def next_change(wanted: ServiceStateChange) -> None:
        async with asyncio.timeout(WAIT_S):
            while (await changes.get()) != (f"{name}.{SERVICE_TYPE}", wanted):
                pass

    browser_zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    browser = AsyncServiceBrowser(browser_zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        server = WyomingServer(StandInTranscriber(), port=0, name=name, advertise=True)
        async with server:
            assert server.advertiser is not None
            assert await server.advertiser.settled() is AdvertiserState.ADVERTISING
            await next_change(ServiceStateChange.Added)
            info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}")
            assert await info.async_request(browser_zc.zeroconf, 5000)
            assert (info.port, info.parsed_addresses()) == (server.port, ["127.0.0.1"])
            await a_good_client_is_served(server, speech)  # where the advert points, the server answers
        await next_change(ServiceStateChange.Removed)
    finally:
        await browser.async_cancel()
        await browser_zc.async_close()
