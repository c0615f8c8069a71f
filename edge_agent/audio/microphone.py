"""Recording from the host's default microphone (the `mic` extra: sounddevice on PortAudio).

Optional because an appliance's audio usually arrives another way (a Wyoming satellite, a file, a pipe
from arecord), and PortAudio is a system library (Debian: libportaudio2) that a headless hub may not have.
"""

from __future__ import annotations

from typing import Any

from edge_agent.client.schemas import SAMPLE_RATE
from edge_agent.errors import ConfigError


def _sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError:
        raise ConfigError(
            "--mic needs the mic extra: pip install 'hearth-edge[mic]' (and PortAudio: apt install "
            "libportaudio2); or pipe audio in: arecord -f S16_LE -r 16000 -c 1 -t raw | hearth listen - --raw"
        ) from None
    except OSError as exc:  # the wheel is there, PortAudio is not
        raise ConfigError(f"--mic: PortAudio is missing ({exc}); apt install libportaudio2") from None
    return sounddevice


def record(seconds: float) -> bytes:
    """``seconds`` of 16 kHz mono s16le from the default input device (PortAudio resamples)."""
    sd = _sounddevice()
    try:
        sd.check_input_settings(samplerate=SAMPLE_RATE, channels=1, dtype="int16")
        frames = sd.rec(int(seconds * SAMPLE_RATE), samplerate=SAMPLE_RATE, channels=1, dtype="int16")
        sd.wait()
    except sd.PortAudioError as exc:
        raise ConfigError(f"--mic: no usable microphone on this host ({exc})") from None
    except ValueError as exc:  # no default input device
        raise ConfigError(f"--mic: no microphone on this host ({exc})") from None
    data: bytes = frames.tobytes()
    return data
