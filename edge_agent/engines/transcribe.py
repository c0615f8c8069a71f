"""Speech to text with Whisper on onnxruntime: log-mel front end, 30 s windows, greedy decoding, guards.

A request's speech segments are joined with a short silence between them (Whisper hears one recording)
and read in 30 s windows, as OpenAI's ``transcribe`` does: after each window the next one starts at the
last complete timestamp pair (with timestamps) or at the window's end, and its prompt carries the text so
far (``<|startofprev|>``). Times in the result map back to the original recording through each segment's
``start_ms`` (a time inside a gap snaps to the nearest segment edge).

Hallucination guards, as faster-whisper applies them at temperature 0: a window whose no-speech
probability is above 0.6 while its average log-probability is below -1 is dropped (silence or noise);
text whose zlib compression ratio is above 2.4 is dropped (a repetition loop); and a loop is cut as soon
as it starts (``whisper_decode.loop_cut``), so it never runs to the token limit. Dropped windows stay in
``segments`` with empty text and the reason, so a caller can see what was thrown away and why.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edge_agent.audio.pcm import pcm16_to_float
from edge_agent.client.schemas import (
    MAX_REQUEST_SPEECH_S,
    SAMPLE_RATE,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranscribeStats,
    TranscriptSegment,
)
from edge_agent.engines.base import Engine, EngineOptions
from edge_agent.engines.sessions import cpu_session_options
from edge_agent.engines.whisper_decode import DecodeOptions, SpecialTokens, WhisperDecoder, WindowResult
from edge_agent.engines.whisper_features import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FRAMES,
    LogMel,
    window,
)
from edge_agent.errors import InvalidRequestError

GAP_S = 0.15
"""Silence put between a request's segments: enough for Whisper to hear a boundary, short enough not to
invite a hallucinated sentence."""
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
SILENCE_DBFS = -60.0
"""A window quieter than this (RMS) is not decoded. Whisper answers near-silence with a confident "you"
(measured on tiny.en: no-speech probability 0.92-0.95 but average log-probability -0.4 to -0.9, which
the no-speech rule keeps); speech from any microphone is 30 dB or more above this level."""
TIME_PRECISION = 0.02  # seconds per timestamp token


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


@dataclass(frozen=True)
class _Placed:
    """Where one request segment sits in the joined audio (ms) and in the original recording."""

    joined_ms: float
    duration_ms: float
    start_ms: int


class _Timeline:
    """Maps times in the joined audio back to the original recording."""

    def __init__(self, placed: list[_Placed]) -> None:
        self.placed = placed

    def to_original(self, t_ms: float, *, is_end: bool) -> int:
        prev: _Placed | None = None
        for p in self.placed:
            if t_ms < p.joined_ms:  # in the gap before p
                if is_end and prev is not None:
                    return round(prev.start_ms + prev.duration_ms)
                return p.start_ms
            if t_ms <= p.joined_ms + p.duration_ms:
                return round(p.start_ms + (t_ms - p.joined_ms))
            prev = p
        last = self.placed[-1]
        return round(last.start_ms + last.duration_ms)


def _dbfs(audio: np.ndarray) -> float:
    if not len(audio):
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else float("-inf")


def join_segments(segments: list[SpeechSegment], gap_s: float = GAP_S) -> tuple[np.ndarray, _Timeline]:
    """The segments' audio back to back with ``gap_s`` of silence between them, and its timeline."""
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    placed: list[_Placed] = []
    pos = 0
    for i, seg in enumerate(segments):
        if i:
            parts.append(gap)
            pos += len(gap)
        where = f"segment {i}"
        audio = pcm16_to_float(seg.samples(where), where)
        placed.append(_Placed(pos * 1000 / SAMPLE_RATE, len(audio) * 1000 / SAMPLE_RATE, seg.start_ms))
        parts.append(audio)
        pos += len(audio)
    return np.concatenate(parts), _Timeline(placed)


class TranscribeEngine(Engine[TranscribeRequest, TranscribeResult]):
    task = "transcribe"

    def __init__(self, pack_dir: Path, task_info: dict[str, Any], threads: int) -> None:
        self.name = str(task_info.get("model", pack_dir.name))
        self.languages = [str(x) for x in task_info.get("languages", ["en"])]
        self.special = SpecialTokens.from_task_info(task_info)
        n_vocab = int(task_info["n_vocab"])
        self.n_text_ctx = int(task_info.get("n_text_ctx", 448))
        # No memory arena (the project's default): measured 2-5% slower, 60 MB less peak RSS.
        opts = cpu_session_options(threads)
        providers = ["CPUExecutionProvider"]
        encoder = ort.InferenceSession(str(pack_dir / "encoder.onnx"), opts, providers=providers)
        decoder = ort.InferenceSession(str(pack_dir / "decoder.onnx"), opts, providers=providers)
        self.decoder = WhisperDecoder(encoder, decoder, self.special, n_vocab, self.n_text_ctx)
        self.tokenizer = Tokenizer.from_file(str(pack_dir / "tokenizer.json"))
        self.mel = LogMel(int(task_info.get("n_mels", 80)))
        self.suppress = np.array(sorted(set(task_info.get("suppress_tokens", []))), dtype=np.int64)
        self.blank = np.array(task_info.get("suppress_blank", [220, self.special.eot]), dtype=np.int64)
        self._lock = threading.Lock()

    @classmethod
    def from_pack(cls, pack_dir: Path, task_info: dict[str, Any], options: EngineOptions) -> Self:
        return cls(pack_dir, task_info, options.threads)

    def run(
        self, request: TranscribeRequest, cancel: threading.Event | None = None
    ) -> Iterator[TranscribeResult]:
        yield self.transcribe(request, cancel)

    # -- public ---------------------------------------------------------------------------------------

    def transcribe(
        self, request: TranscribeRequest, cancel: threading.Event | None = None
    ) -> TranscribeResult:
        """Transcribe ``request``; a set ``cancel`` stops decoding early (the partial result is returned)."""
        if request.language not in self.languages:
            raise InvalidRequestError(
                f"language '{request.language}' is not supported by {self.name} "
                f"(it transcribes: {', '.join(self.languages)})"
            )
        request.validate_audio()
        t0 = time.perf_counter()
        audio, timeline = join_segments(request.segments)
        segments, windows, n_tokens = self.transcribe_audio(
            audio, timestamps=request.timestamps, max_tokens=request.max_tokens, cancel=cancel
        )
        out: list[TranscriptSegment] = []
        for seg in segments:
            start = timeline.to_original(seg.start_ms, is_end=False)
            end = max(start, timeline.to_original(seg.end_ms, is_end=True))
            out.append(seg.model_copy(update={"start_ms": start, "end_ms": end}))
        stats = TranscribeStats(
            speech_ms=request.speech_ms,
            windows=windows,
            tokens=n_tokens,
            total_ms=(time.perf_counter() - t0) * 1000,
        )
        text = " ".join(s.text for s in out if s.text)
        return TranscribeResult(
            text=text, segments=out, language=request.language, model=self.name, stats=stats
        )

    def transcribe_audio(
        self,
        audio: np.ndarray,
        *,
        timestamps: bool = False,
        max_tokens: int = 224,
        cancel: threading.Event | None = None,
    ) -> tuple[list[TranscriptSegment], int, int]:
        """Segments (times in ms of ``audio``), windows read and tokens generated, for 16 kHz float audio
        of any length."""
        options = DecodeOptions(
            timestamps=timestamps, max_tokens=max_tokens, suppress=self.suppress, blank=self.blank
        )
        with self._lock:
            mel = self.mel(audio)
            content_frames = len(audio) // HOP_LENGTH
            seek, windows, n_tokens = 0, 0, 0
            previous: list[int] = []
            segments: list[TranscriptSegment] = []
            while seek < content_frames:
                if cancel is not None and cancel.is_set():
                    break
                size = min(N_FRAMES, content_frames - seek)
                level = _dbfs(audio[seek * HOP_LENGTH : (seek + size) * HOP_LENGTH])
                if level < SILENCE_DBFS:
                    segments.append(self._silent(seek, size, level))
                    windows += 1
                    seek += size
                    continue
                cross = self.decoder.encode(window(mel, seek))
                prefix = self._prefix(previous)
                result = self.decoder.decode(cross, prefix, options, cancel)
                windows += 1
                n_tokens += len(result.tokens)
                found, advance = self._segments(result, seek, size, timestamps)
                segments += found
                if not any(s.dropped for s in found):
                    previous += [t for t in result.tokens if t < self.special.eot]
                seek += advance
        return segments, windows, n_tokens

    def greedy_tokens(self, audio: np.ndarray) -> list[int]:
        """Token ids of one window of 16 kHz audio (at most 30 s), greedy, no prompt, ``eot`` last."""
        with self._lock:
            cross = self.decoder.encode(window(self.mel(audio), 0))
            result = self.decoder.decode(cross, [], self._options())
        return [*result.tokens, self.special.eot]

    def teacher_forced(self, audio: np.ndarray, reference: list[int]) -> list[int]:
        """What this pack predicts at each position of ``reference`` (``greedy_tokens`` of another
        pack) when fed the reference so far: the quality gate's measure."""
        with self._lock:
            cross = self.decoder.encode(window(self.mel(audio), 0))
            return self.decoder.teacher_forced(cross, reference, self._options())

    def decode_text(self, tokens: list[int]) -> str:
        return self._text([t for t in tokens if t < self.special.eot])

    def _options(self) -> DecodeOptions:
        return DecodeOptions(timestamps=False, max_tokens=224, suppress=self.suppress, blank=self.blank)

    # -- pieces ---------------------------------------------------------------------------------------

    def _prefix(self, previous: list[int]) -> list[int]:
        """``<|startofprev|>`` and the latest text so far (at most half the context, as OpenAI does)."""
        if not previous:
            return []
        keep = self.n_text_ctx // 2 - 1
        return [self.special.sot_prev, *previous[-keep:]]

    @staticmethod
    def _silent(seek: int, size: int, level: float) -> TranscriptSegment:
        return TranscriptSegment(
            start_ms=round(seek * 1000 / FRAMES_PER_SECOND),
            end_ms=round((seek + size) * 1000 / FRAMES_PER_SECOND),
            text="",
            no_speech_prob=1.0,
            dropped=f"silence: level {level:.0f} dBFS is below {SILENCE_DBFS:.0f} dBFS",
        )

    def _text(self, tokens: list[int]) -> str:
        text: str = self.tokenizer.decode([t for t in tokens if t < self.special.eot])
        return text.strip()

    def _segments(
        self, result: WindowResult, seek: int, size: int, timestamps: bool
    ) -> tuple[list[TranscriptSegment], int]:
        """The window's segments (ms in the joined audio) and how many frames to advance."""
        start_ms = seek * 1000 / FRAMES_PER_SECOND
        end_ms = (seek + size) * 1000 / FRAMES_PER_SECOND
        text = self._text(result.tokens)
        ratio = compression_ratio(text)
        common: dict[str, Any] = {
            "avg_logprob": round(result.avg_logprob, 4),
            "no_speech_prob": round(result.no_speech_prob, 4),
            "compression_ratio": round(ratio, 3),
        }
        dropped: str | None = None
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
            dropped = (
                f"no speech: no-speech probability {result.no_speech_prob:.2f} > {NO_SPEECH_THRESHOLD} "
                f"and average log-probability {result.avg_logprob:.2f} < {LOGPROB_THRESHOLD}"
            )
        elif ratio > COMPRESSION_RATIO_THRESHOLD:
            dropped = f"repetitive: compression ratio {ratio:.2f} > {COMPRESSION_RATIO_THRESHOLD}"
        if dropped is not None:
            seg = TranscriptSegment(start_ms=round(start_ms), end_ms=round(end_ms), text="", dropped=dropped)
            return [seg.model_copy(update=common)], size
        if not timestamps:
            if not text:
                return [], size
            seg = TranscriptSegment(start_ms=round(start_ms), end_ms=round(end_ms), text=text, **common)
            return [seg], size
        return self._timestamped(result.tokens, seek, size, common)

    def _timestamped(
        self, tokens: list[int], seek: int, size: int, common: dict[str, Any]
    ) -> tuple[list[TranscriptSegment], int]:
        """Split at timestamp pairs, as OpenAI's ``transcribe`` does; also where the next window starts."""
        ts0 = self.special.timestamp_begin
        offset_ms = seek * 1000 / FRAMES_PER_SECOND
        is_ts = [t >= ts0 for t in tokens]
        single_ending = len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]
        cuts = [i + 1 for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
        segments: list[TranscriptSegment] = []

        def add(part: list[int]) -> None:
            text = self._text(part)
            if not text:
                return
            stamps = [t for t in part if t >= ts0]
            first = (stamps[0] - ts0) * TIME_PRECISION * 1000 if stamps else 0.0
            last = (stamps[-1] - ts0) * TIME_PRECISION * 1000 if len(stamps) > 1 else size * 10.0
            segments.append(
                TranscriptSegment(
                    start_ms=round(offset_ms + first), end_ms=round(offset_ms + last), text=text, **common
                )
            )

        if cuts:
            if single_ending:
                cuts.append(len(tokens))
            prev = 0
            for cut in cuts:
                add(tokens[prev:cut])
                prev = cut
            if single_ending:
                advance = size
            else:
                last_ts = tokens[prev - 1] - ts0
                advance = max(1, last_ts * round(TIME_PRECISION * FRAMES_PER_SECOND))
        else:
            add(tokens)
            advance = size
        return segments, advance


def measure_worst_case(pack_dir: Path, task_info: dict[str, Any], threads: int) -> None:
    """The largest request: 15 s of speech-like audio in one window, decoded to the token limit."""
    engine = TranscribeEngine(pack_dir, task_info, threads)
    rng = np.random.default_rng(0)
    n = int(MAX_REQUEST_SPEECH_S * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    audio = (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audio += rng.normal(0, 0.01, n).astype(np.float32)
    engine.transcribe_audio(audio, timestamps=True)
    # The longest self-attention cache a window can build: force the decoder through the token limit.
    cross = engine.decoder.encode(window(engine.mel(audio), 0))
    engine.decoder.run_steps(cross, engine.n_text_ctx // 2)
