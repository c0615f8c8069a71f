"""16 kHz mono s16le PCM, the one wire format for speech, and float32 samples, what the models read.

Scaling is by 2^15 both ways, so a PCM buffer survives float32 and back bit-exact (every s16 value times
2^-15 is exact in float32). Floats at or past full scale are clipped to the s16 range, never wrapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from edge_agent.errors import InvalidAudioError

Samples = npt.NDArray[np.float32]
"""Mono float32 audio in [-1, 1] at 16 kHz."""

SCALE = 32768.0


def pcm16_to_float(pcm: bytes, where: str) -> Samples:
    """The samples of s16le ``pcm``; InvalidAudioError (naming ``where``) for a half sample."""
    if len(pcm) % 2:
        raise InvalidAudioError(f"{where}: {len(pcm)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(SCALE)


def float_to_pcm16(samples: npt.ArrayLike) -> bytes:
    """s16le bytes of float ``samples`` (rounded to the nearest step, clipped at full scale)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * np.float32(SCALE))
    pcm: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype("<i2")
    return pcm.tobytes()


def iter_pcm16(stream: BinaryIO, chunk_samples: int, where: str = "stdin") -> Iterator[Samples]:
    """float32 chunks of ``chunk_samples`` read from a raw s16le stream (a pipe or a file), the last one
    shorter. Reads until each chunk is full, since a pipe hands over whatever it has (a short read is not
    the end); InvalidAudioError if the stream ends half-way through a sample."""
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be at least 1, not {chunk_samples}")
    want = chunk_samples * 2
    total = 0
    while True:
        buf = bytearray()
        while len(buf) < want:
            got = stream.read(want - len(buf))
            if not got:
                break
            buf += got
        total += len(buf)
        if len(buf) % 2:
            raise InvalidAudioError(f"{where}: {total} bytes is not a whole number of 16-bit samples")
        if buf:
            yield pcm16_to_float(bytes(buf), where)
        if len(buf) < want:
            return
