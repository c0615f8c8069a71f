"""Recording → speech spans (VAD, always on this device) → windows → transcripts, routed like any task.

Only speech leaves the device: the VAD runs here, and each window a peer may see holds nothing but the
spans it found (with their offsets, so timestamps still refer to the recording). A window carries at most
``MAX_REQUEST_SPEECH_S`` of speech (one mesh frame); windows go out one after another, each through the
router's failover, so a peer dying mid-recording costs one window's retry, not the recording.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from edge_agent.client.schemas import (
    BYTES_PER_SECOND,
    MAX_REQUEST_SPEECH_S,
    SAMPLE_RATE,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
)
from edge_agent.errors import InvalidAudioError
from edge_agent.voice.transcript import TranscriptPiece

log = logging.getLogger(__name__)

Span = tuple[int, int]
"""Speech from sample ``start`` up to (not including) sample ``end``, at 16 kHz."""
FindSpeech = Callable[[bytes], Awaitable[list[Span]]]
"""The VAD: 16 kHz mono s16le PCM in, speech spans out (in order, not overlapping)."""
TranscribeWindow = Callable[[TranscribeRequest], Awaitable[tuple[TranscribeResult, str]]]
"""One window to wherever routing sends it: (result, device that served it)."""

MAX_WINDOW_SAMPLES = int(MAX_REQUEST_SPEECH_S * SAMPLE_RATE)


def windows_of(
    pcm: bytes, spans: list[Span], max_samples: int = MAX_WINDOW_SAMPLES
) -> list[list[SpeechSegment]]:
    """Speech spans packed, in order, into windows of at most ``max_samples`` of speech each. A span
    longer than a window (the VAD splits long speech at pauses, so only unbroken speech gets here) is cut
    into window-sized pieces."""
    total = len(pcm) // 2
    pieces: list[Span] = []
    for start, end in spans:
        start, end = max(0, start), min(total, end)
        while end - start > max_samples:
            pieces.append((start, start + max_samples))
            start += max_samples
        if end > start:
            pieces.append((start, end))
    out: list[list[SpeechSegment]] = []
    current: list[SpeechSegment] = []
    used = 0
    for start, end in pieces:
        if current and used + (end - start) > max_samples:
            out.append(current)
            current, used = [], 0
        current.append(SpeechSegment.from_pcm(start * 1000 // SAMPLE_RATE, pcm[start * 2 : end * 2]))
        used += end - start
    if current:
        out.append(current)
    return out


@dataclass
class VoicePipeline:
    """Implements ``Transcriber`` (edge_agent.voice.transcript) for the CLI and the Wyoming server."""

    find_speech: FindSpeech
    transcribe: TranscribeWindow
    language: str = "en"
    max_seconds: float = 600.0

    def check(self, pcm: bytes, where: str = "the recording") -> None:
        if not pcm:
            raise InvalidAudioError(f"{where} is empty: no audio to transcribe")
        if len(pcm) % 2:
            raise InvalidAudioError(f"{where}: {len(pcm)} bytes is not a whole number of 16-bit samples")
        seconds = len(pcm) / BYTES_PER_SECOND
        if seconds > self.max_seconds:
            raise InvalidAudioError(
                f"{where} is {seconds:.0f} s long; "
                f"the limit is {self.max_seconds:.0f} s ([voice] max_seconds)"
            )

    async def transcribe_pcm(
        self, pcm: bytes, *, language: str | None = None
    ) -> AsyncIterator[TranscriptPiece]:
        self.check(pcm)
        t0 = time.perf_counter()
        spans = await self.find_speech(pcm)
        windows = windows_of(pcm, spans)
        log.info(
            "VAD: %d speech spans, %.1f s of %.1f s, in %d windows (%.0f ms)",
            len(spans), sum(e - s for s, e in spans) / SAMPLE_RATE, len(pcm) / BYTES_PER_SECOND,
            len(windows), (time.perf_counter() - t0) * 1000,
        )  # fmt: skip
        if not windows:
            yield TranscriptPiece(index=0, text="", served_by="", final=True)
            return
        for i, segments in enumerate(windows):
            request = TranscribeRequest(segments=segments, language=language or self.language)
            result, served_by = await self.transcribe(request)
            yield TranscriptPiece(
                index=i,
                text=result.text.strip(),
                segments=result.segments,
                served_by=served_by,
                speech_ms=result.stats.speech_ms,
                final=i == len(windows) - 1,
            )
