"""The numpy log-mel front end against the two reference implementations in the venv: Hugging Face's
WhisperFeatureExtractor (OpenAI's recipe: audio padded to 30 s, float64) and faster-whisper's
FeatureExtractor (float32, the same STFT; it pads only 160 samples, so the frames near the end differ)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from benchmarks.rigs.speech import corpus
from edge_agent.audio.pcm import pcm16_to_float
from edge_agent.engines.whisper_features import N_FRAMES, LogMel, mel_filters, window

# Measured over the 48 corpus clips and the synthetic edge cases below: at most 4.8e-3 from Hugging Face
# (float64 STFT vs our float32; the largest gaps are in bins near the log10 clamp of loud noise) and
# 1.2e-7 from faster-whisper (the same float32 arithmetic). Features span about [-1.5, 1.5].
HF_TOLERANCE = 1e-2
FW_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    speech = [sf.read(u.path, dtype="float32")[0] for u in corpus(tmp_path_factory.mktemp("speech"))]
    rng = np.random.default_rng(1)
    edge = [
        np.zeros(16_000, np.float32),  # digital silence
        rng.normal(0, 0.1, 50).astype(np.float32),  # shorter than one FFT frame
        rng.normal(0, 0.3, 16_000 * 30).astype(np.float32),  # exactly one window
        rng.normal(0, 0.3, 16_000 * 15).astype(np.float32),  # a request's longest speech
    ]
    return speech + edge


def test_filters_are_librosa_slaney_filters() -> None:
    from faster_whisper.feature_extractor import FeatureExtractor
    from transformers import WhisperFeatureExtractor

    ours = mel_filters(80)
    assert ours.shape == (80, 201) and ours.dtype == np.float32
    assert np.abs(ours - WhisperFeatureExtractor(feature_size=80).mel_filters.T).max() < 1e-8
    assert np.abs(ours - FeatureExtractor(feature_size=80).mel_filters).max() < 1e-8


def test_window_matches_hugging_face(clips: list[np.ndarray]) -> None:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    mel = LogMel(80)
    worst = 0.0
    for audio in clips:
        ours = window(mel(audio), 0)
        assert ours.shape == (1, 80, N_FRAMES) and ours.dtype == np.float32
        ref = fe(audio, sampling_rate=16_000, return_tensors="np").input_features
        worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst < HF_TOLERANCE


def test_frames_match_faster_whisper(clips: list[np.ndarray]) -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    fe = FeatureExtractor(feature_size=80)
    mel = LogMel(80)
    checked = 0
    for audio in clips:
        n = len(audio) // 160 - 2  # its last frames see its own 160-sample padding reflected
        if n <= 0:
            continue
        ours = mel(audio, padding=160)[:, :n]
        assert np.abs(ours - fe(audio)[:, :n]).max() < FW_TOLERANCE
        checked += 1
    assert checked == len(clips) - 1


def test_long_audio_has_a_frame_per_hop_and_short_windows_are_padded_with_silence() -> None:
    rng = np.random.default_rng(2)
    audio = rng.normal(0, 0.2, 16_000 * 40).astype(np.float32)  # longer than a window
    mel = LogMel(80)(audio)
    assert mel.shape == (80, (len(audio) + 480_000) // 160)
    tail = window(mel, 3500)  # 5 s of audio left, then the 30 s of padding
    assert tail.shape == (1, 80, N_FRAMES)
    floor = float(mel.min())
    assert np.all(tail[0, :, 600:] == floor)
    assert np.isclose(floor, float(mel.max()) - 2.0)  # the clamp: 8 log10 units below the peak, / 4


def test_pcm16_scaling() -> None:
    pcm = np.array([-32768, 0, 16384, 32767], dtype="<i2").tobytes()
    assert pcm16_to_float(pcm, "pcm").tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]
