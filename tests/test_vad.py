"""Silero VAD on the real pack against silero-vad's own implementation, on espeak-ng speech.

silero-vad 6.2.3 imports without torchaudio (only its read_audio/save_audio need it), so the reference is
the package itself: its OnnxWrapper and get_speech_timestamps on the same samples, with torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from benchmarks.rigs.speech import SENTENCES, VOICES, joined, padded, speak
from edge_agent.audio import float_to_pcm16, load_audio
from edge_agent.client.schemas import MAX_REQUEST_SPEECH_S, SAMPLE_RATE
from edge_agent.engines.base import EngineOptions, engine_class
from edge_agent.engines.vad import (
    Span,
    SpanTracker,
    VadEngine,
    VadEvent,
    spans_from_probabilities,
)
from edge_agent.engines.vad_models import MAX_VAD_REQUEST_S, VadParams, VadRequest
from edge_agent.errors import InvalidAudioError, PackNotFoundError
from edge_agent.models.store import PackStore

pytestmark = pytest.mark.slow  # the built Silero pack

PACK = "silero-vad@fp32"
LEAD_S, PAUSE_S, TRAIL_S = 1.0, 1.2, 1.5
VOICED = 0.001  # a sample above -60 dBFS is sound; espeak's own silences are exact zeros
MS = SAMPLE_RATE // 1000
# Span bounds around each sentence's first and last voiced sample. Measured over the 4 voices x 2 sentence
# pairs (benchmarks/rigs/speech.py VOICES): starts from 41 ms before to 45 ms after the first voiced sample
# (a window is 32 ms, the pad 30 ms, and onsets are soft), ends from 45 ms before (a faint tail under the
# model's notice) to 129 ms after the last (min_silence 100 ms + pad 30 ms, less the model's own lag).
START_EARLY_MS, START_LATE_MS = 80, 80
END_EARLY_MS, END_LATE_MS = 80, 200
# A stream reports a start once the speech is sure to outlast min_speech_duration_ms (250) from its raw
# start, which is pad (30) after the reported sample; the deciding window is read up to 32 ms after that
# and the 10 ms feed holding it ends up to 10 ms later: 250 + 30 + 32 + 10 = 322. An end is decided once
# the silence has lasted min_silence_duration_ms (100) at a window boundary (up to 32 ms more), the
# reported sample being pad (30) into the silence, then the window is read (32) and the feed ends (10):
# 100 + 32 - 30 + 32 + 10 = 144.
START_LATENCY_MS, END_LATENCY_MS = 330, 150


@pytest.fixture(scope="module")
def engine() -> VadEngine:
    try:
        pack = PackStore().get(PACK)
    except PackNotFoundError:
        pytest.fail(f"no {PACK} pack: run `hearth models build silero-vad` (or make packs)")
    loaded = engine_class("vad").from_pack(pack.path, pack.manifest.task_info, EngineOptions(threads=2))
    assert isinstance(loaded, VadEngine)
    return loaded


@pytest.fixture(scope="module")
def silero() -> Any:
    import silero_vad

    return silero_vad


@dataclass(frozen=True)
class TwoSentences:
    samples: np.ndarray
    voiced: list[tuple[int, int]]  # each sentence's first and last+1 voiced sample in the file
    silences: list[tuple[int, int]]  # lead, pause, trail (between the voiced extents)


def _voiced(path: Path) -> tuple[int, int, int]:
    x, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    loud = np.flatnonzero(np.abs(x) > VOICED)
    return len(x), int(loud[0]), int(loud[-1]) + 1


def _two_sentences(root: Path, voice: str, wpm: int) -> TwoSentences:
    tag = voice.replace("+", "_")
    a = speak(SENTENCES[0], root / f"a-{tag}.wav", voice, wpm)
    b = speak(SENTENCES[1], root / f"b-{tag}.wav", voice, wpm)
    path = padded(joined([a, b], root / f"ab-{tag}.wav", PAUSE_S), root / f"two-{tag}.wav", LEAD_S, TRAIL_S)
    audio = load_audio(path, name=path.name, max_seconds=60)
    (len_a, a0, a1), (_, b0, b1) = _voiced(a), _voiced(b)
    lead, b_at = int(LEAD_S * SAMPLE_RATE), int((LEAD_S + PAUSE_S) * SAMPLE_RATE) + len_a
    voiced = [(lead + a0, lead + a1), (b_at + b0, b_at + b1)]
    silences = [(0, voiced[0][0]), (voiced[0][1], voiced[1][0]), (voiced[1][1], len(audio.samples))]
    return TwoSentences(audio.samples, voiced, silences)


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vad")


@pytest.fixture(scope="module")
def two(speech_dir: Path) -> TwoSentences:
    return _two_sentences(speech_dir, *VOICES[0])


@pytest.mark.parametrize(("voice", "wpm"), VOICES)
def test_two_sentences_give_two_spans_covering_them(
    engine: VadEngine, speech_dir: Path, voice: str, wpm: int
) -> None:
    audio = _two_sentences(speech_dir, voice, wpm)
    spans = engine.speech_spans(audio.samples)
    assert len(spans) == 2, spans
    for (start, end), (v0, v1) in zip(spans, audio.voiced, strict=True):
        assert v0 - START_EARLY_MS * MS <= start <= v0 + START_LATE_MS * MS, (start - v0) / MS
        assert v1 - END_EARLY_MS * MS <= end <= v1 + END_LATE_MS * MS, (end - v1) / MS
    # None in the silences: whatever a span takes of a silence is at its edge, within the bounds above.
    for lo, hi in audio.silences:
        inside = [(max(s, lo), min(e, hi)) for s, e in spans if s < hi and e > lo]
        assert all(b - a <= END_LATE_MS * MS for a, b in inside), (lo, hi, spans)
    assert spans[1][0] - spans[0][1] >= (PAUSE_S * 1000 - END_LATE_MS - START_EARLY_MS) * MS


def _silero_spans(silero: Any, samples: np.ndarray, params: VadParams) -> list[Span]:
    import torch

    model = silero.load_silero_vad(onnx=True)
    found = silero.get_speech_timestamps(
        torch.from_numpy(samples),
        model,
        threshold=params.threshold,
        neg_threshold=params.neg_threshold,
        min_speech_duration_ms=params.min_speech_duration_ms,
        min_silence_duration_ms=params.min_silence_duration_ms,
        speech_pad_ms=params.speech_pad_ms,
        max_speech_duration_s=params.max_speech_duration_s,
        min_silence_at_max_speech=params.min_silence_at_max_speech_ms,
        use_max_poss_sil_at_max_speech=params.cut_at_longest_silence,
    )
    return [Span(int(d["start"]), int(d["end"])) for d in found]


# Defaults; long speech cut at its longest or last inner silence (1.5 s forces cuts in these sentences);
# a low threshold; pads wider than the gaps a cut leaves (the padding step then splits the gap).
PARAMS = [
    VadParams(),
    VadParams(max_speech_duration_s=1.5),
    VadParams(max_speech_duration_s=1.5, cut_at_longest_silence=False, min_silence_duration_ms=300),
    VadParams(threshold=0.3, min_speech_duration_ms=100, min_silence_duration_ms=50),
    VadParams(max_speech_duration_s=1.2, speech_pad_ms=200, min_silence_at_max_speech_ms=30),
]


def test_probabilities_equal_silero(engine: VadEngine, silero: Any, two: TwoSentences) -> None:
    import torch

    reference = silero.load_silero_vad(onnx=True).audio_forward(torch.from_numpy(two.samples), SAMPLE_RATE)
    ours = engine.probabilities(two.samples)
    # The same graph on the same onnxruntime with one thread: any difference would be our windows,
    # context or state, so the comparison is exact.
    np.testing.assert_array_equal(ours, reference.numpy()[0])
    assert len(ours) == -(-len(two.samples) // 512)


@pytest.mark.parametrize("params", PARAMS, ids=range(len(PARAMS)))
def test_spans_equal_silero(engine: VadEngine, silero: Any, two: TwoSentences, params: VadParams) -> None:
    ours = engine.speech_spans(two.samples, params)
    assert ours == _silero_spans(silero, two.samples, params)
    assert ours  # the audio has speech, so the comparison compares something
    limit = params.max_speech_duration_s * SAMPLE_RATE
    assert all(e - s <= limit for s, e in ours)


def _probability_runs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Runs of speech-like, silence-like and undecided probabilities: every branch of the algorithm."""
    out: list[float] = []
    while len(out) < n:
        level = (0.05, 0.9, 0.45)[int(rng.integers(0, 3))]
        out += np.clip(level + rng.normal(0, 0.15, int(rng.integers(1, 40))), 0, 1).tolist()
    return np.asarray(out[:n], dtype=np.float32)


def test_span_decisions_equal_silero_on_many_sequences(silero: Any) -> None:
    """silero's own decision step (get_speech_timestamps_from_probs) over seeded probability sequences
    and parameters, far more cuts, close gaps and odd lengths than a few recordings exercise; the
    streaming tracker must decide the same spans, one window at a time."""
    rng = np.random.default_rng(20240501)
    compared = spans = 0
    while compared < 200:
        n = int(rng.integers(1, 1500))
        length = n * 512 - int(rng.integers(0, 512))
        try:
            params = VadParams(
                threshold=float(rng.choice([0.3, 0.5, 0.7])),
                min_speech_duration_ms=int(rng.choice([0, 100, 250, 600])),
                min_silence_duration_ms=int(rng.choice([0, 32, 100, 300])),
                speech_pad_ms=int(rng.choice([0, 30, 100, 250])),
                max_speech_duration_s=float(rng.choice([1.0, 2.0, 5.0, 15.0])),
                min_silence_at_max_speech_ms=int(rng.choice([0, 98, 200])),
                cut_at_longest_silence=bool(rng.integers(0, 2)),
            )
        except ValidationError:
            continue  # a combination VadParams refuses (max speech too short for the pads)
        probs = _probability_runs(rng, n)
        reference = silero.get_speech_timestamps_from_probs(
            probs.tolist(),
            threshold=params.threshold,
            min_speech_duration_ms=params.min_speech_duration_ms,
            min_silence_duration_ms=params.min_silence_duration_ms,
            speech_pad_ms=params.speech_pad_ms,
            max_speech_duration_s=params.max_speech_duration_s,
            min_silence_at_max_speech=params.min_silence_at_max_speech_ms,
            use_max_poss_sil_at_max_speech=params.cut_at_longest_silence,
            audio_length_samples=length,
        )
        expected = [Span(d["start"], d["end"]) for d in reference]
        assert spans_from_probabilities(probs, length, params) == expected, params
        tracker = SpanTracker(params)
        events: list[VadEvent] = []
        for p in probs[:-1]:
            events += tracker.push(float(p))
        events += tracker.finish(length, float(probs[-1]))
        assert tracker.spans == expected, params
        assert [e.kind for e in events] == ["start", "end"] * len(expected)
        compared += 1
        spans += len(expected)
    assert spans > 2000  # the sequences are not trivially empty


@pytest.mark.parametrize("params", PARAMS[:3], ids=range(3))
@pytest.mark.parametrize("feed", [160, 511, 512, 4000, 10**9])
def test_stream_gives_the_whole_file_spans(
    engine: VadEngine, two: TwoSentences, params: VadParams, feed: int
) -> None:
    stream = engine.stream(params)
    events: list[tuple[int, VadEvent]] = []  # (samples fed when reported, event)
    for k in range(0, len(two.samples), feed):
        fed = min(k + feed, len(two.samples))
        events += [(fed, e) for e in stream.feed(two.samples[k : k + feed])]
    events += [(len(two.samples), e) for e in stream.finish()]
    spans = engine.speech_spans(two.samples, params)
    assert [e.kind for _, e in events] == ["start", "end"] * len(spans)
    pairs = zip(events[::2], events[1::2], strict=True)
    assert [Span(s.sample, e.sample) for (_, s), (_, e) in pairs] == spans == stream.spans
    if feed == 160 and params == VadParams():  # a live microphone's 10 ms frames
        for fed, event in events[:-1]:  # the last end may wait for the end of the audio
            late = START_LATENCY_MS if event.kind == "start" else END_LATENCY_MS
            assert fed - event.sample <= late * MS, (event, (fed - event.sample) / MS)


def test_stream_refuses_audio_after_finish(engine: VadEngine, two: TwoSentences) -> None:
    stream = engine.stream()
    stream.feed(two.samples[:8000])
    stream.finish()
    assert stream.finish() == []
    with pytest.raises(RuntimeError, match="finished"):
        stream.feed(two.samples[:8000])


def test_silence_and_nothing_have_no_spans(engine: VadEngine) -> None:
    assert engine.speech_spans(np.zeros(3 * SAMPLE_RATE, dtype=np.float32)) == []
    assert engine.speech_spans(np.zeros(0, dtype=np.float32)) == []
    assert engine.stream().finish() == []


def test_request_through_the_engine_interface(engine: VadEngine, two: TwoSentences) -> None:
    results = list(engine.run(VadRequest.from_pcm(float_to_pcm16(two.samples))))
    assert len(results) == 1
    result = results[0]
    spans = engine.speech_spans(two.samples)
    assert [(s.start_ms, s.end_ms) for s in result.spans] == [(s // MS, -(-e // MS)) for s, e in spans]
    assert result.duration_ms == len(two.samples) // MS and result.model == "silero-vad"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (VadRequest(pcm="not base64!"), "vad request: pcm is not base64"),
        (VadRequest(pcm="AAAA"), "vad request: 3 bytes is not a whole number of 16-bit samples"),
    ],
)
def test_bad_request_audio(engine: VadEngine, request_: VadRequest, message: str) -> None:
    with pytest.raises(InvalidAudioError) as err:
        engine.detect(request_)
    assert str(err.value) == message


def test_request_audio_is_bounded() -> None:
    too_long = b"\0\0" * int((MAX_VAD_REQUEST_S + 1) * SAMPLE_RATE)
    with pytest.raises(ValidationError, match="pcm"):
        VadRequest.from_pcm(too_long)


def test_two_channels_are_refused(engine: VadEngine) -> None:
    with pytest.raises(InvalidAudioError, match=r"one channel of samples, got an array of shape \(2, 512\)"):
        engine.speech_spans(np.zeros((2, 512), dtype=np.float32))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": 0.0}, "greater than 0"),
        ({"threshold": 1.0}, "less than 1"),
        ({"threshold": 0.5, "neg_threshold": 0.6}, r"neg_threshold \(0.6\) must be below threshold \(0.5\)"),
        ({"min_speech_duration_ms": -1}, "greater than or equal to 0"),
        ({"speech_pad_ms": 5000}, "less than or equal to 1000"),
        ({"max_speech_duration_s": 0.3}, r"max_speech_duration_s \(0.3\) leaves no room for speech"),
        ({"max_speech_duration_s": 7200}, "less than or equal to 3600"),
        ({"window_size_samples": 256}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        VadParams(**fields)


def test_defaults_are_silero_s_with_spans_that_fit_a_request() -> None:
    p = VadParams()
    assert p.threshold == 0.5 and p.effective_neg_threshold == pytest.approx(0.35)
    assert (p.min_speech_duration_ms, p.min_silence_duration_ms, p.speech_pad_ms) == (250, 100, 30)
    assert p.max_speech_duration_s == MAX_REQUEST_SPEECH_S
    assert VadParams(threshold=0.1).effective_neg_threshold == 0.01
