"""The one conversion to speech format (16 kHz mono) for every way audio arrives: whole recordings
(`hearth listen`'s files and pipes, through `edge_agent.audio.decode`) and streams (the Wyoming server's
chunks, through `SpeechStream`).

Channels are averaged and soxr's HQ resampler brings the rate to 16 kHz in both cases; audioop's
`ratecv` (what wyoming's own converter uses) does no anti-alias filtering.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from edge_agent.audio.pcm import Samples, float_to_pcm16
from edge_agent.client.schemas import SAMPLE_RATE

__all__ = ["SpeechStream", "int_pcm_to_float", "resample", "to_mono"]


def to_mono(frames: npt.NDArray[np.float32]) -> Samples:
    """``frames`` shaped (samples, channels) as one channel: the channels' mean."""
    if frames.shape[1] == 1:
        return frames[:, 0]
    mono: Samples = frames.mean(axis=1, dtype=np.float32)
    return mono


def resample(mono: Samples, rate: int) -> Samples:
    """A whole recording at ``rate`` as 16 kHz (soxr HQ); already 16 kHz passes through."""
    if rate == SAMPLE_RATE:
        return mono
    out: Samples = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return out


def int_pcm_to_float(audio: bytes, width: int) -> Samples:
    """Interleaved little-endian integer PCM of ``width`` bytes per sample (1: unsigned, as in WAV;
    2-4: signed, 3 packed) as floats in [-1, 1]. ``audio`` must hold whole samples."""
    if width == 1:
        return (np.frombuffer(audio, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:
        b = np.frombuffer(audio, np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        out: Samples = ((value ^ 0x800000) - 0x800000).astype(np.float32) / float(1 << 23)
        return out
    dtype, scale = ("<i2", 1 << 15) if width == 2 else ("<i4", 1 << 31)
    return (np.frombuffer(audio, dtype).astype(np.float64) / scale).astype(np.float32)


class SpeechStream:
    """One stream's audio, converted chunk by chunk to 16 kHz mono s16le (resampler state carries across
    chunks; 16 kHz mono s16 passes through untouched)."""

    def __init__(self, rate: int, width: int, channels: int) -> None:
        if not (rate > 0 and 1 <= width <= 4 and channels >= 1):
            raise ValueError(f"no such PCM format: {rate} Hz, {width} bytes, {channels} channel(s)")
        self.rate, self.width, self.channels = rate, width, channels
        self.frame_bytes = width * channels
        self.passthrough = (rate, width, channels) == (SAMPLE_RATE, 2, 1)
        self._rest = b""
        self._resampler = (
            None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, quality="HQ")
        )

    def convert(self, audio: bytes) -> bytes:
        """Chunks need not hold whole frames: Home Assistant's STT API forwards its HTTP body as it
        arrives (split anywhere), so a frame cut between two chunks is put back together."""
        if self._rest:
            audio = self._rest + audio
        cut = len(audio) - len(audio) % self.frame_bytes
        audio, self._rest = audio[:cut], audio[cut:]
        if self.passthrough or not audio:
            return audio
        samples = int_pcm_to_float(audio, self.width)
        mono = to_mono(samples.reshape(-1, self.channels)) if self.channels > 1 else samples
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        return float_to_pcm16(mono)

    def finish(self) -> bytes:
        """What the resampler still holds (its filter delay), at the stream's end; a trailing part of a
        frame (less than one sample) is dropped."""
        self._rest = b""
        if self._resampler is None:
            return b""
        return float_to_pcm16(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
