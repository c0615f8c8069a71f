"""Any recording a user hands Hearth, as 16 kHz mono float32: what the VAD and Whisper read.

libsndfile (through soundfile) decodes WAV, FLAC and OGG from a file or from bytes (stdin); channels are
averaged and soxr's HQ resampler brings the rate to 16 kHz
(`edge_agent.audio.convert`, as for the Wyoming server's streams). Everything a user can get wrong is an
InvalidAudioError naming the source, raised before any large allocation where possible: the length and
rate come from the header, so a two-hour file is refused without decoding it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from edge_agent.audio.convert import resample, to_mono
from edge_agent.audio.pcm import Samples, float_to_pcm16, pcm16_to_float
from edge_agent.client.schemas import SAMPLE_RATE
from edge_agent.errors import InvalidAudioError

MIN_SOURCE_RATE = 8000
"""Telephone rate: below it the band that carries speech (up to ~3.4 kHz) is gone."""
CLIP_LEVEL = 32767 / 32768
"""A sample at or past this magnitude sits at full scale (the top s16 step, or beyond for float files)."""
CLIP_WARN_FRACTION = 0.01
"""Above this fraction of clipped samples the caller should warn: distortion starts to hurt recognition."""
FORMATS = "WAV, FLAC or OGG"


@dataclass(frozen=True, eq=False)
class Audio:
    """Decoded audio, ready for the VAD. ``duration`` and the clipping figure describe the source."""

    samples: Samples
    source_rate: int
    channels: int
    duration: float
    clipped_fraction: float

    @property
    def clipped(self) -> bool:
        return self.clipped_fraction > CLIP_WARN_FRACTION

    def pcm16(self) -> bytes:
        return float_to_pcm16(self.samples)


def load_audio(source: Path | bytes, *, name: str, max_seconds: float) -> Audio:
    """Decode a file, or its bytes (``name`` says where they came from, e.g. ``stdin``)."""
    if isinstance(source, Path):
        if not source.exists():
            raise InvalidAudioError(f"{name}: no such file")
        if not source.is_file():
            raise InvalidAudioError(f"{name} is not a file")
        size = source.stat().st_size
    else:
        size = len(source)
    if size == 0:
        raise InvalidAudioError(f"{name} is empty (0 bytes)")
    try:
        with sf.SoundFile(str(source) if isinstance(source, Path) else io.BytesIO(source)) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            _check_header(name, rate, frames, max_seconds)
            data: npt.NDArray[np.float32] = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        reason = exc.error_string.strip().rstrip(".")
        raise InvalidAudioError(
            f"{name} is not audio Hearth can read ({FORMATS}): {reason[:1].lower()}{reason[1:]}"
        ) from None
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise InvalidAudioError(f"{name}: could not decode it: {exc}") from None
    if data.shape[0] == 0:
        raise InvalidAudioError(f"{name} holds no audio (0 samples)")
    if not np.isfinite(data).all():
        raise InvalidAudioError(f"{name} holds samples that are not numbers (NaN or infinite)")
    return _to_speech_rate(data, rate, channels)


def from_pcm16(pcm: bytes, *, name: str, max_seconds: float) -> Audio:
    """Raw 16 kHz mono s16le (a headerless pipe): the wire format, so no resampling."""
    if not pcm:
        raise InvalidAudioError(f"{name} is empty (0 bytes)")
    if len(pcm) % 2 == 0:  # a half sample is pcm16_to_float's error; the length check comes first
        _check_header(name, SAMPLE_RATE, len(pcm) // 2, max_seconds)
    return _to_speech_rate(pcm16_to_float(pcm, name)[:, None], SAMPLE_RATE, 1)


def _check_header(name: str, rate: int, frames: int, max_seconds: float) -> None:
    if rate < MIN_SOURCE_RATE:
        raise InvalidAudioError(
            f"{name} is sampled at {rate} Hz, too low to carry speech (at least {MIN_SOURCE_RATE} Hz)"
        )
    if frames <= 0:
        raise InvalidAudioError(f"{name} holds no audio (0 samples)")
    if frames / rate > max_seconds:
        raise InvalidAudioError(f"{name} is {frames / rate:.1f} s long (limit {max_seconds:g} s)")


def _to_speech_rate(data: npt.NDArray[np.float32], rate: int, channels: int) -> Audio:
    """Clipping is measured on the source (resampling smears full-scale runs); then down-mix, resample."""
    clipped = float(np.count_nonzero(np.abs(data) >= CLIP_LEVEL)) / data.size
    mono = resample(to_mono(data), rate)  # edge_agent.audio.convert: the one conversion, as for streams
    samples = np.ascontiguousarray(mono, dtype=np.float32)
    return Audio(samples, rate, channels, data.shape[0] / rate, clipped)
