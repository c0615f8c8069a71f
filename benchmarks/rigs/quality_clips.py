"""The speech a Whisper pack's quality reference is made of (``edge_agent/packs/builders/quality_inputs``).

Committed as FLAC so a fresh machine builds packs without espeak-ng; made by ``python -m
benchmarks.rigs.quality_clips`` (espeak-ng + sox in their repeatable modes: the same bytes every time, which
``tests/test_quality_gate.py`` checks). Each clip is hard in its own way: two words; a command with a
second of silence around it (the input that came out as nonsense on a CPU without VNNI); pink noise at
10 dB; a fast voice; a slow voice, padded, in light noise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.rigs import speech

INPUTS = Path(__file__).resolve().parents[2] / "edge_agent" / "models" / "builders" / "quality_inputs"

# name, text, espeak-ng voice, words per minute, pink-noise SNR (dB) or None, (lead, trail) silence or None
CLIPS: tuple[tuple[str, str, str, int, int | None, tuple[float, float] | None], ...] = (
    ("short", "Lights off.", "en-us", 160, None, (0.3, 0.3)),
    ("padded", "Turn off the kitchen lights.", "en-us", 160, None, (1.0, 1.0)),
    ("noisy", "Set a timer for the pasta in the kitchen.", "en-gb", 175, 10, None),
    ("fast", "Open the garage door and turn on the porch light.", "en-us+m4", 190, None, None),
    ("slow-padded", "Remind me to buy milk tomorrow morning.", "en-us+f3", 140, 20, (0.8, 0.8)),
)


def make(out: Path, work: Path) -> list[Path]:
    """Every clip as 16 kHz mono FLAC in ``out`` (``work`` holds the intermediate WAVs)."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    made = []
    for name, text, voice, wpm, snr, pad in CLIPS:
        wav = speech.speak(text, work / f"{name}.clean.wav", voice, wpm)
        if snr is not None:
            wav = speech.with_noise(wav, work / f"{name}.noisy.wav", snr)
        if pad is not None:
            wav = speech.padded(wav, work / f"{name}.pad.wav", *pad)
        flac = out / f"{name}.flac"
        subprocess.run(["sox", "-D", "-R", str(wav), "-C", "8", str(flac)], check=True)
        made.append(flac)
    return made


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for path in make(Path(sys.argv[1]) if len(sys.argv) > 1 else INPUTS, Path(tmp)):
            print(path)
