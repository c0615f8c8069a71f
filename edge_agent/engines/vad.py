"""Silero VAD v6 on onnxruntime: where the speech is, in a file or in a live stream.

The model is recurrent: it reads 512 new samples (32 ms at 16 kHz) after the last 64 of the previous
window, carries a [2, 1, 128] state, and gives one speech probability per window. The onnxruntime session
is shared and stateless; each file or stream keeps its own window and state, so a microphone stream and a
file can use one engine at once.

Spans come from silero-vad's own ``get_speech_timestamps`` algorithm (6.2.3), ported step for step so
the spans are identical to the package's (tests/test_vad.py checks it): hysteresis between ``threshold``
and ``neg_threshold``, a span ends after ``min_silence_duration_ms`` below it, spans shorter than
``min_speech_duration_ms`` are dropped, too-long speech is cut at an inner silence, and the padding step
splits a gap shorter than two pads between its neighbours. ``VadStream`` runs the same steps as audio
arrives and reports each start and end as soon as no later audio can change it.

One intra-op thread: a window is a few small matrix products. Measured on a 2-core Xeon (onnxruntime
1.32): 115-119 us per window on one thread; two threads take 101 us of wall time but 200 us of CPU, and
320-409 us when the other core is busy, as it is with the recogniser running alongside.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge_agent.audio.pcm import Samples, float_to_pcm16, pcm16_to_float
from edge_agent.client.schemas import SAMPLE_RATE
from edge_agent.engines.base import Engine, EngineOptions
from edge_agent.engines.sessions import cpu_session_options
from edge_agent.engines.vad_models import CHUNK_SAMPLES, VadParams, VadRequest, VadResult, VadSpan
from edge_agent.errors import InvalidAudioError, PackError

CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)
MODEL_FILE = "model.onnx"
SAMPLES_PER_MS = SAMPLE_RATE // 1000


class Span(NamedTuple):
    """Speech from ``start_sample`` (inclusive) to ``end_sample`` (exclusive), 16 kHz, padding included."""

    start_sample: int
    end_sample: int

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start_sample / SAMPLE_RATE, self.end_sample / SAMPLE_RATE


@dataclass(frozen=True)
class VadEvent:
    """A decided boundary of a span: ``sample`` is its padded start or end, counted from the stream's
    first sample. Events alternate start, end, start, end; an end's span is ``(last start, sample)``."""

    kind: Literal["start", "end"]
    sample: int


class _Window:
    """One sequence's model input (64 samples of context + 512 new) and recurrent state."""

    __slots__ = ("state", "x")

    def __init__(self) -> None:
        self.x = np.zeros((1, CONTEXT_SAMPLES + CHUNK_SAMPLES), dtype=np.float32)
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)


class _Segmenter:
    """silero-vad's span decisions (``get_speech_timestamps_from_probs``, before padding), one window at
    a time. ``step`` returns the spans it keeps at that window, unpadded; names follow silero's."""

    def __init__(self, params: VadParams) -> None:
        sr = SAMPLE_RATE
        self.threshold = params.threshold
        self.neg_threshold = params.effective_neg_threshold
        self.min_speech = sr * params.min_speech_duration_ms / 1000
        self.pad = sr * params.speech_pad_ms / 1000
        self.max_speech = sr * params.max_speech_duration_s - CHUNK_SAMPLES - 2 * self.pad
        self.min_silence = sr * params.min_silence_duration_ms / 1000
        self.min_silence_at_max = sr * params.min_silence_at_max_speech_ms / 1000
        self.longest = params.cut_at_longest_silence
        self.i = 0  # windows seen
        self.triggered = False
        self.start = 0  # the current speech's start (meaningful while triggered)
        self.temp_end = 0
        self.prev_end = 0
        self.next_start = 0
        self.possible_ends: list[tuple[int, int]] = []

    def step(self, prob: float) -> list[tuple[int, int]]:
        kept: list[tuple[int, int]] = []
        cur = CHUNK_SAMPLES * self.i
        self.i += 1
        if prob >= self.threshold and self.temp_end:
            sil_dur = cur - self.temp_end
            if sil_dur > self.min_silence_at_max:
                self.possible_ends.append((self.temp_end, sil_dur))
            self.temp_end = 0
            if self.next_start < self.prev_end:
                self.next_start = cur
        if prob >= self.threshold and not self.triggered:
            self.triggered = True
            self.start = cur
            return kept
        if self.triggered and cur - self.start > self.max_speech:
            if self.longest and self.possible_ends:
                self.prev_end, dur = max(self.possible_ends, key=lambda p: p[1])
                kept.append((self.start, self.prev_end))
                self.next_start = self.prev_end + dur
                if self.next_start < self.prev_end + cur:
                    self.start = self.next_start
                else:
                    self.triggered = False
                self.prev_end = self.next_start = self.temp_end = 0
                self.possible_ends = []
            elif self.prev_end:
                kept.append((self.start, self.prev_end))
                if self.next_start < self.prev_end:
                    self.triggered = False
                else:
                    self.start = self.next_start
                self.prev_end = self.next_start = self.temp_end = 0
                self.possible_ends = []
            else:
                kept.append((self.start, cur))
                self.prev_end = self.next_start = self.temp_end = 0
                self.triggered = False
                self.possible_ends = []
                return kept
        if prob < self.neg_threshold and self.triggered:
            if not self.temp_end:
                self.temp_end = cur
            sil_dur_now = cur - self.temp_end
            if not self.longest and sil_dur_now > self.min_silence_at_max:
                self.prev_end = self.temp_end
            if sil_dur_now < self.min_silence:
                return kept
            if self.temp_end - self.start > self.min_speech:
                kept.append((self.start, self.temp_end))
            self.prev_end = self.next_start = self.temp_end = 0
            self.triggered = False
            self.possible_ends = []
        return kept

    def finish(self, length: int) -> list[tuple[int, int]]:
        """The speech still open when the audio (``length`` samples) ends, if long enough."""
        if self.triggered and length - self.start > self.min_speech:
            self.triggered = False
            return [(self.start, length)]
        self.triggered = False
        return []

    def surely_kept(self) -> bool:
        """Whether the open speech will be a span whatever comes next: any end it can still get (its
        pending silence start, or a later window) leaves it longer than the minimum; a cut keeps it anyway."""
        bound = self.temp_end or CHUNK_SAMPLES * self.i
        return self.triggered and bound - self.start > self.min_speech


def pad_spans(raw: list[tuple[int, int]], length: int, params: VadParams) -> list[Span]:
    """silero's padding step: ``speech_pad_ms`` on both sides, or half of a gap shorter than two pads."""
    pad = SAMPLE_RATE * params.speech_pad_ms / 1000
    spans = [list(r) for r in raw]
    for i, s in enumerate(spans):
        if i == 0:
            s[0] = int(max(0, s[0] - pad))
        if i != len(spans) - 1:
            gap = spans[i + 1][0] - s[1]
            if gap < 2 * pad:
                s[1] += int(gap // 2)
                spans[i + 1][0] = int(max(0, spans[i + 1][0] - gap // 2))
            else:
                s[1] = int(min(length, s[1] + pad))
                spans[i + 1][0] = int(max(0, spans[i + 1][0] - pad))
        else:
            s[1] = int(min(length, s[1] + pad))
    return [Span(a, b) for a, b in spans]


def spans_from_probabilities(probs: npt.ArrayLike, length: int, params: VadParams) -> list[Span]:
    """Spans of ``length`` samples of audio, given one speech probability per 512-sample window."""
    seg = _Segmenter(params)
    raw: list[tuple[int, int]] = []
    for p in np.asarray(probs, dtype=np.float64).tolist():
        raw += seg.step(p)
    raw += seg.finish(length)
    return pad_spans(raw, length, params)


class VadEngine(Engine[VadRequest, VadResult]):
    task = "vad"

    def __init__(self, pack_dir: Path, task_info: dict[str, Any], threads: int = 1) -> None:
        facts = {"sample_rate": SAMPLE_RATE, "chunk": CHUNK_SAMPLES, "context": CONTEXT_SAMPLES}
        wrong = {k: task_info.get(k) for k, v in facts.items() if task_info.get(k, v) != v}
        if wrong:
            raise PackError(
                f"{pack_dir.name}: this engine runs Silero VAD v6 ({facts}), the pack says {wrong}"
            )
        self.name = str(task_info.get("model", pack_dir.name))
        self.session = ort.InferenceSession(
            str(pack_dir / MODEL_FILE),
            sess_options=cpu_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    @classmethod
    def from_pack(cls, pack_dir: Path, task_info: dict[str, Any], options: EngineOptions) -> Self:
        return cls(pack_dir, task_info, threads=1)  # see the module docstring

    def run(self, request: VadRequest, cancel: threading.Event | None = None) -> Iterator[VadResult]:
        yield self.detect(request)  # the longest request takes ~45 ms: not worth checking ``cancel``

    def detect(self, request: VadRequest) -> VadResult:
        samples = pcm16_to_float(request.samples(), "vad request")
        spans = self.speech_spans(samples, request.params)
        return VadResult(
            spans=[VadSpan(start_ms=s // SAMPLES_PER_MS, end_ms=-(-e // SAMPLES_PER_MS)) for s, e in spans],
            duration_ms=len(samples) // SAMPLES_PER_MS,
            model=self.name,
        )

    # -- in-process API (numpy, no base64) --------------------------------------------------------------

    def probabilities(self, samples: Samples) -> npt.NDArray[np.float32]:
        """One speech probability per 512-sample window; the last window is zero-padded (as silero does)."""
        x = _mono(samples)
        n = -(-len(x) // CHUNK_SAMPLES)
        padded = np.zeros(n * CHUNK_SAMPLES, dtype=np.float32)
        padded[: len(x)] = x
        window = _Window()
        out = np.empty(n, dtype=np.float32)
        for k in range(n):
            out[k] = self._step(window, padded[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES])
        return out

    def speech_spans(self, samples: Samples, params: VadParams | None = None) -> list[Span]:
        """The speech in a whole recording (16 kHz mono float32), as silero-vad's get_speech_timestamps."""
        x = _mono(samples)
        return spans_from_probabilities(self.probabilities(x), len(x), params or VadParams())

    def stream(self, params: VadParams | None = None) -> VadStream:
        return VadStream(self, params or VadParams())

    def _step(self, window: _Window, chunk: Samples) -> float:
        window.x[0, :CONTEXT_SAMPLES] = window.x[0, CHUNK_SAMPLES:]
        window.x[0, CONTEXT_SAMPLES:] = chunk
        prob, window.state = self.session.run(
            ["output", "stateN"], {"input": window.x, "state": window.state, "sr": self._sr}
        )
        return float(prob[0, 0])


class SpanTracker:
    """``pad_spans(_Segmenter)`` decided one window at a time: reports each span's padded start and end
    as soon as no later window can change it. Gives exactly ``spans_from_probabilities``."""

    def __init__(self, params: VadParams) -> None:
        self.pad = SAMPLE_RATE * params.speech_pad_ms // 1000
        self.spans: list[Span] = []  # every span completed so far
        self._seg = _Segmenter(params)
        self._last_end: int | None = None  # raw end of the last kept span
        self._end_open = False  # ... whose padded end is not reported yet
        self._started: int | None = None  # raw start of the open speech whose start is reported
        self._span_start = 0  # padded start of the span being reported
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, prob: float) -> list[VadEvent]:
        """The next full 512-sample window's speech probability."""
        if self._finished:
            raise RuntimeError("this VAD stream has finished; start a new one")
        events: list[VadEvent] = []
        for span in self._seg.step(prob):
            events += self._kept(span)
        seg = self._seg
        if seg.triggered and self._started != seg.start and seg.surely_kept():
            events += self._start(seg.start)
            self._started = seg.start
        if self._end_open and self._last_end is not None:
            # A later span starts at the open speech's start at the earliest, else at an unread window;
            # and the audio is at least as long as the windows read.
            seen = CHUNK_SAMPLES * seg.i
            earliest = seg.start if seg.triggered else seen
            if earliest - self._last_end >= 2 * self.pad and seen >= self._last_end + self.pad:
                events.append(self._end(self._last_end + self.pad))
        return events

    def finish(self, length: int, last: float | None = None) -> list[VadEvent]:
        """The audio ended after ``length`` samples; ``last`` is the probability of its final, partial
        window (zero-padded), if it had one."""
        if self._finished:
            return []
        self._finished = True
        events: list[VadEvent] = []
        for span in [*(self._seg.step(last) if last is not None else []), *self._seg.finish(length)]:
            events += self._kept(span)
        if self._end_open and self._last_end is not None:
            events.append(self._end(min(length, self._last_end + self.pad)))
        return events

    def _kept(self, span: tuple[int, int]) -> list[VadEvent]:
        """A span silero keeps: report its start unless done already (which settles the previous end),
        and hold its end until the gap after it is known."""
        start, end = span
        events = [] if self._started == start else self._start(start)
        self._started = None
        self._last_end, self._end_open = end, True
        return events

    def _start(self, start: int) -> list[VadEvent]:
        """The padded start of the next kept span (raw start ``start``), after the previous span's end."""
        events: list[VadEvent] = []
        if self._last_end is None:
            padded = max(0, start - self.pad)
        else:
            gap = start - self._last_end
            cut = gap // 2 if gap < 2 * self.pad else self.pad
            padded = max(0, start - cut)
            if self._end_open:
                events.append(self._end(self._last_end + cut))
        self._span_start = padded
        events.append(VadEvent("start", padded))
        return events

    def _end(self, sample: int) -> VadEvent:
        self._end_open = False
        self.spans.append(Span(self._span_start, sample))
        return VadEvent("end", sample)


class VadStream:
    """Live VAD: ``feed`` chunks of any size, get each span's start and end once they are decided; call
    ``finish`` when the audio ends. The events give exactly ``VadEngine.speech_spans`` of the whole audio.
    A start is reported once the speech is sure to be kept (``min_speech_duration_ms`` after it begins);
    an end once no later audio can move it (``min_silence_duration_ms`` plus up to two pads after it).
    Sample numbers count from the stream's first sample. Keep the last ``max_speech_duration_s`` + 1 s of
    audio to cut spans from: a start (after a cut at an inner silence) can lie that far back."""

    def __init__(self, engine: VadEngine, params: VadParams) -> None:
        self.engine = engine
        self.params = params
        self.samples_seen = 0
        self._tracker = SpanTracker(params)
        self._window = _Window()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a full window

    @property
    def spans(self) -> list[Span]:
        """Every span completed so far."""
        return self._tracker.spans

    def feed(self, samples: Samples) -> list[VadEvent]:
        if self._tracker.finished:
            raise RuntimeError("this VAD stream has finished; start a new one")
        x = _mono(samples)
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        events: list[VadEvent] = []
        whole = len(buf) - len(buf) % CHUNK_SAMPLES
        for k in range(0, whole, CHUNK_SAMPLES):
            events += self._tracker.push(self.engine._step(self._window, buf[k : k + CHUNK_SAMPLES]))
        self._pending = buf[whole:].copy()
        self.samples_seen += len(x)
        return events

    def finish(self) -> list[VadEvent]:
        """The end of the audio: its last partial window, the speech still open, every held end."""
        last = None
        if len(self._pending):
            chunk = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
            chunk[: len(self._pending)] = self._pending
            last = self.engine._step(self._window, chunk)
            self._pending = chunk[:0]
        return self._tracker.finish(self.samples_seen, last)


def _mono(samples: Samples) -> Samples:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise InvalidAudioError(f"VAD input must be one channel of samples, got an array of shape {x.shape}")
    return x


def measure_worst_case(pack_dir: Path, task_info: dict[str, Any], threads: int) -> None:
    """What ``measure.py`` runs for the peak-RAM figure: a full request's worth of audio through the
    whole-file path and a stream (the session's buffers do not grow with the audio; the arrays do)."""
    from edge_agent.engines.vad_models import MAX_VAD_REQUEST_S

    engine = VadEngine(pack_dir, task_info, threads=1)
    n = int(MAX_VAD_REQUEST_S * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    # A 200 Hz buzz switched on and off every second: speech-like enough to open and close spans.
    audio = (0.3 * np.sin(2 * np.pi * 200 * t) * (np.floor(t) % 2 == 0)).astype(np.float32)
    engine.detect(VadRequest.from_pcm(float_to_pcm16(audio)))
    stream = engine.stream()
    for k in range(0, n, 1600):
        stream.feed(audio[k : k + 1600])
    stream.finish()
