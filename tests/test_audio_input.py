"""Audio input on real files: espeak-ng speech converted by sox to the formats and rates users hand us."""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmarks.rigs.speech import SENTENCES, speak
from edge_agent.audio import (
    CLIP_WARN_FRACTION,
    SpeechStream,
    float_to_pcm16,
    from_pcm16,
    iter_pcm16,
    load_audio,
    pcm16_to_float,
)
from edge_agent.client.schemas import SAMPLE_RATE
from edge_agent.errors import InvalidAudioError

# Resampling 16 kHz -> 44.1 kHz (sox) -> 16 kHz (soxr HQ) keeps the waveform: measured RMS error 0.71% of
# the signal's RMS (both resamplers roll off just below 8 kHz, where espeak still has a little energy).
ROUND_TRIP_RMS_BOUND = 0.02


def sox(*args: str) -> None:
    proc = subprocess.run(["sox", "-R", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@dataclass(frozen=True)
class Speech:
    path: Path
    samples: np.ndarray  # the 16 kHz mono original
    dir: Path


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    root = tmp_path_factory.mktemp("audio-input")
    path = speak(SENTENCES[0], root / "speech.wav")
    samples, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    return Speech(path, samples, root)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_44k_stereo_becomes_16k_mono_of_the_same_length(speech: Speech, suffix: str) -> None:
    src = speech.dir / f"stereo44.{suffix}"
    sox(str(speech.path), "-r", "44100", "-c", "2", str(src))
    audio = load_audio(src, name=src.name, max_seconds=10)
    assert (audio.source_rate, audio.channels) == (44100, 2)
    frames = sf.info(str(src)).frames
    assert audio.duration == frames / 44100
    assert abs(audio.duration - len(speech.samples) / SAMPLE_RATE) < 1 / SAMPLE_RATE
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert abs(len(audio.samples) - frames * SAMPLE_RATE / 44100) <= 1
    n = min(len(audio.samples), len(speech.samples))
    err = _rms(audio.samples[:n] - speech.samples[:n])
    assert err < ROUND_TRIP_RMS_BOUND * _rms(speech.samples), err / _rms(speech.samples)
    assert audio.clipped_fraction == 0.0 and not audio.clipped


def test_bytes_from_stdin_decode_like_the_file(speech: Speech) -> None:
    src = speech.dir / "stdin.flac"
    sox(str(speech.path), "-r", "22050", str(src))
    from_file = load_audio(src, name="x", max_seconds=10)
    from_bytes = load_audio(src.read_bytes(), name="stdin", max_seconds=10)
    np.testing.assert_array_equal(from_file.samples, from_bytes.samples)
    assert from_bytes.source_rate == 22050


def test_ogg_decodes(speech: Speech) -> None:
    src = speech.dir / "speech.ogg"
    sox(str(speech.path), "-r", "48000", str(src))
    audio = load_audio(src, name=src.name, max_seconds=10)
    assert audio.source_rate == 48000
    assert abs(len(audio.samples) - len(speech.samples)) <= 1


def test_channels_are_averaged(speech: Speech) -> None:
    src = speech.dir / "left-only.wav"
    sox(str(speech.path), "-c", "2", str(src), "remix", "1", "0")  # right channel silent
    audio = load_audio(src, name=src.name, max_seconds=10)
    np.testing.assert_allclose(audio.samples, speech.samples / 2, atol=1 / 32768)


def test_raw_pcm_is_taken_as_16k_mono(speech: Speech) -> None:
    pcm = float_to_pcm16(speech.samples)
    audio = from_pcm16(pcm, name="stdin", max_seconds=10)
    np.testing.assert_array_equal(audio.samples, speech.samples)  # s16 -> float -> s16 is exact
    assert (audio.source_rate, audio.channels) == (SAMPLE_RATE, 1)
    assert audio.duration == len(speech.samples) / SAMPLE_RATE
    assert audio.pcm16() == pcm


def test_clipping_is_measured_not_refused(speech: Speech) -> None:
    loud = speech.dir / "loud.wav"
    sox(str(speech.path), str(loud), "vol", "6")  # sox warns that it clipped samples
    audio = load_audio(loud, name=loud.name, max_seconds=10)
    ints = sf.read(loud, dtype="int16")[0].astype(np.int32)
    expected = np.count_nonzero(np.abs(ints) >= 32767) / ints.size  # the top s16 step on either side
    assert audio.clipped_fraction == pytest.approx(expected, abs=1e-12)
    assert audio.clipped_fraction > CLIP_WARN_FRACTION and audio.clipped


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "name", "message"),
    [
        (
            lambda d: _write(d / "notes.txt", b"turn off the kitchen lights\n" * 20),
            "notes.txt",
            "notes.txt is not audio Hearth can read (WAV, FLAC or OGG): format not recognised",
        ),
        (lambda d: _write(d / "empty.wav", b""), "empty.wav", "empty.wav is empty (0 bytes)"),
        (lambda d: d / "missing.wav", "missing.wav", "missing.wav: no such file"),
        (lambda d: d, "recordings", "recordings is not a file"),
    ],
)
def test_unreadable_sources_are_clear_errors(speech: Speech, make, name: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidAudioError) as err:
        load_audio(make(speech.dir), name=name, max_seconds=10)
    assert str(err.value) == message


def test_a_wav_without_samples_is_empty(speech: Speech) -> None:
    src = speech.dir / "nothing.wav"
    sox("-n", "-r", "16000", "-c", "1", "-b", "16", str(src), "trim", "0", "0")
    with pytest.raises(InvalidAudioError) as err:
        load_audio(src, name=src.name, max_seconds=10)
    assert str(err.value) == "nothing.wav holds no audio (0 samples)"


def test_too_long_is_refused_from_the_header(speech: Speech) -> None:
    src = speech.dir / "three-seconds.flac"
    sox("-n", "-r", "44100", "-c", "2", str(src), "synth", "3", "sine", "440")
    with pytest.raises(InvalidAudioError) as err:
        load_audio(src, name=src.name, max_seconds=2.5)
    assert str(err.value) == "three-seconds.flac is 3.0 s long (limit 2.5 s)"
    with pytest.raises(InvalidAudioError) as err:
        from_pcm16(b"\0\0" * (3 * SAMPLE_RATE), name="stdin", max_seconds=2)
    assert str(err.value) == "stdin is 3.0 s long (limit 2 s)"


def test_a_rate_below_8k_is_refused(speech: Speech) -> None:
    src = speech.dir / "phone.wav"
    sox(str(speech.path), "-r", "4000", str(src))
    with pytest.raises(InvalidAudioError) as err:
        load_audio(src, name=src.name, max_seconds=10)
    assert str(err.value) == "phone.wav is sampled at 4000 Hz, too low to carry speech (at least 8000 Hz)"
    ok = speech.dir / "telephone.wav"
    sox(str(speech.path), "-r", "8000", str(ok))
    assert load_audio(ok, name=ok.name, max_seconds=10).source_rate == 8000


def test_float_wav_with_nan_is_refused(speech: Speech) -> None:
    data = speech.samples.copy()
    data[100] = np.nan
    src = speech.dir / "nan.wav"
    sf.write(src, data, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(InvalidAudioError) as err:
        load_audio(src, name=src.name, max_seconds=10)
    assert str(err.value) == "nan.wav holds samples that are not numbers (NaN or infinite)"


@pytest.mark.parametrize(
    ("pcm", "message"),
    [
        (b"\x01\x00\x02", "stdin: 3 bytes is not a whole number of 16-bit samples"),
        (b"", "stdin is empty (0 bytes)"),
    ],
)
def test_bad_raw_pcm(pcm: bytes, message: str) -> None:
    with pytest.raises(InvalidAudioError) as err:
        from_pcm16(pcm, name="stdin", max_seconds=10)
    assert str(err.value) == message


def test_pcm_conversions_round_trip_and_clip() -> None:
    every = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert float_to_pcm16(pcm16_to_float(every, "all values")) == every
    assert pcm16_to_float(every, "x").min() == -1.0 and pcm16_to_float(every, "x").max() == 32767 / 32768
    assert (
        float_to_pcm16(np.array([1.5, -2.0, 1.0, 0.5], dtype=np.float32))
        == np.array([32767, -32768, 32767, 16384], dtype="<i2").tobytes()
    )


class _Trickle(io.RawIOBase):
    """A pipe that hands over at most 7 bytes per read, as a slow writer's pipe may."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 7) if size >= 0 else 7)


def test_iter_pcm16_fills_each_chunk_from_short_reads(speech: Speech) -> None:
    pcm = float_to_pcm16(speech.samples)
    chunks = list(iter_pcm16(_Trickle(pcm), 1600))  # type: ignore[arg-type]
    assert [len(c) for c in chunks[:-1]] == [1600] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= 1600
    np.testing.assert_array_equal(np.concatenate(chunks), speech.samples)
    with open(speech.path, "rb") as fh:  # a file works too (here: the WAV's bytes taken as raw PCM)
        assert sum(len(c) for c in iter_pcm16(fh, 512)) == speech.path.stat().st_size // 2


def test_iter_pcm16_refuses_a_half_sample_at_the_end() -> None:
    with pytest.raises(
        InvalidAudioError, match=r"^stdin: 3201 bytes is not a whole number of 16-bit samples$"
    ):
        list(iter_pcm16(io.BytesIO(b"\0" * 3201), 800))


def test_a_stream_and_a_file_go_through_one_conversion() -> None:
    """The Wyoming server's chunks (`SpeechStream`, split anywhere, even inside a frame) and a file
    (`load_audio`) of the same 48 kHz 24-bit stereo audio become the same 16 kHz mono, to within the
    stream's rounding to s16: one down-mix, one resampler."""
    rate = 48_000
    t = np.arange(2 * rate) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], 1)
    wav, raw = io.BytesIO(), io.BytesIO()
    sf.write(wav, stereo.astype(np.float32), rate, subtype="PCM_24", format="WAV")
    sf.write(raw, stereo.astype(np.float32), rate, subtype="PCM_24", format="RAW")
    whole = load_audio(wav.getvalue(), name="a file", max_seconds=10).samples
    stream, pcm = SpeechStream(rate, 3, 2), b""
    for i in range(0, len(raw.getvalue()), 1001):  # 1001 bytes: frames (6 bytes) cut across chunks
        pcm += stream.convert(raw.getvalue()[i : i + 1001])
    streamed = pcm16_to_float(pcm + stream.finish(), "the stream")
    assert len(streamed) == len(whole) == 2 * SAMPLE_RATE
    assert float(np.max(np.abs(streamed - whole))) <= 0.5 / 32768
