"""Whisper's log-mel front end in numpy (no torch, no librosa on the device).

Matches OpenAI's ``log_mel_spectrogram``: 400-point periodic Hann window, hop 160, centred frames with
reflect padding, power spectrum, Slaney mel filters (librosa's), log10 clamped at 1e-10, a dynamic range
of 8 (in log10 units) below the loudest bin, then (x + 4) / 4. Audio is padded with 30 s of zeros first,
as OpenAI's ``transcribe`` does, so the frames after the speech are silence (not zero features, which
would read as a constant hum to the model).

Speed: frames are a strided view (no copy until the window is applied), one float32 ``rfft`` over all
of them, and one matrix product with the filters.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    out: np.ndarray = np.where(freq >= min_log_hz, log_part, mels)
    return out


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    out: np.ndarray = np.where(mels >= min_log_mel, log_part, freqs)
    return out


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with Slaney area normalisation: ``[n_mels, n_fft//2+1]``."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    mel_pts = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    fdiff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


class LogMel:
    """Reusable front end: the window and filter bank are computed once."""

    def __init__(self, n_mels: int = 80) -> None:
        self.n_mels = n_mels
        self.filters_t = np.ascontiguousarray(mel_filters(n_mels).T)  # [201, n_mels]
        n = np.arange(N_FFT, dtype=np.float64)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)  # periodic Hann

    def __call__(self, audio: np.ndarray, padding: int = N_SAMPLES) -> np.ndarray:
        """Log-mel of ``audio`` (float32 in [-1, 1], 16 kHz) followed by ``padding`` zero samples:
        ``[n_mels, (len(audio) + padding) // 160]`` float32."""
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        total = len(x) + padding
        n_frames = total // HOP_LENGTH  # OpenAI drops the last centred frame
        half = N_FFT // 2
        # Only the frames that touch the audio need an FFT: the rest see zeros (power exactly 0).
        busy = min(n_frames, (len(x) + half) // HOP_LENGTH + 2)
        span = (busy - 1) * HOP_LENGTH + N_FFT
        padded = np.zeros(max(span, len(x) + 2 * half), dtype=np.float32)
        padded[half : half + len(x)] = x
        head = np.zeros(half + 1, dtype=np.float32)  # the start of audio + its zero padding
        head[: min(len(x), half + 1)] = x[: half + 1]
        padded[:half] = head[half:0:-1]  # reflect padding at the start
        frames = np.lib.stride_tricks.sliding_window_view(padded[:span], N_FFT)[::HOP_LENGTH]
        spec = np.fft.rfft(frames * self.window, axis=-1)
        power = spec.real * spec.real + spec.imag * spec.imag
        mel = np.zeros((n_frames, self.n_mels), dtype=np.float32)
        mel[:busy] = power.astype(np.float32, copy=False) @ self.filters_t
        log_spec = np.log10(np.maximum(mel, np.float32(1e-10)))
        log_spec = np.maximum(log_spec, log_spec.max() - np.float32(8.0))
        out: np.ndarray = ((log_spec + np.float32(4.0)) / np.float32(4.0)).T
        return np.ascontiguousarray(out, dtype=np.float32)


def window(mel: np.ndarray, seek: int, frames: int = N_FRAMES) -> np.ndarray:
    """``mel[:, seek:seek+frames]`` as ``[1, n_mels, frames]``, padded with the silence level if short."""
    chunk = mel[:, seek : seek + frames]
    if chunk.shape[1] < frames:
        floor = np.float32(mel.min()) if mel.size else np.float32(-1.5)
        pad = np.full((mel.shape[0], frames - chunk.shape[1]), floor, dtype=np.float32)
        chunk = np.concatenate([chunk, pad], axis=1)
    return np.ascontiguousarray(chunk[None], dtype=np.float32)
