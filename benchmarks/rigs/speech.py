"""Speech with a known transcript, for the voice tests and the ASR benchmark.

Real audio, made the same way every time: espeak-ng speaks known sentences (several voices and speeds,
it is deterministic), sox resamples to 16 kHz mono s16 and mixes in pink noise at a fixed SNR, always
without dither (``-D``) and in its repeatable mode (``-R``): the same bytes on every run and machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SENTENCES: tuple[str, ...] = (
    "Turn off the kitchen lights.",
    "Set a timer for the pasta in the kitchen.",
    "What is the temperature in the living room?",
    "Remind me to buy milk tomorrow morning.",
    "Open the garage door and turn on the porch light.",
    "The quick brown fox jumps over the lazy dog.",
    "Please play some quiet music in the bedroom.",
    "How long until the dishwasher is finished?",
)

VOICES: tuple[tuple[str, int], ...] = (("en-us", 160), ("en-gb", 175), ("en-us+f3", 140), ("en-us+m4", 190))
"""(espeak-ng voice, words per minute): American and British, female and male variants, slow to fast."""

SNRS_DB: tuple[int, ...] = (20, 10)


@dataclass(frozen=True)
class Utterance:
    path: Path
    text: str
    voice: str
    wpm: int
    snr_db: int | None = None


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"the voice tests need {' and '.join(missing)} (make system-deps installs them)")


def _run(cmd: list[str]) -> str:
    if cmd[0] == "sox":  # no dither (random unless -R) and repeatable noise: the same bytes on every run
        cmd = ["sox", "-D", "-R", *cmd[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stderr  # sox prints `stat` to stderr


def speak(text: str, out: Path, voice: str = "en-us", wpm: int = 160) -> Path:
    """``text`` spoken by espeak-ng, as a 16 kHz mono 16-bit WAV at ``out``."""
    require_tools()
    raw = out.with_suffix(".espeak.wav")
    _run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text])
    _run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)])
    raw.unlink()
    return out


def rms(path: Path) -> float:
    match = re.search(r"RMS\s+amplitude:\s+([0-9.]+)", _run(["sox", str(path), "-n", "stat"]))
    if not match:
        raise RuntimeError(f"sox stat printed no RMS for {path}")
    return float(match.group(1))


def duration_s(path: Path) -> float:
    out = subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def with_noise(clean: Path, out: Path, snr_db: float) -> Path:
    """``clean`` mixed with pink noise ``snr_db`` below its RMS (repeatable: sox -R)."""
    noise = out.with_suffix(".noise.wav")
    _run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(noise),
          "synth", f"{duration_s(clean):.4f}", "pinknoise", "vol", "0.5"])  # fmt: skip
    gain = rms(clean) / rms(noise) / (10 ** (snr_db / 20))
    _run(["sox", "-m", "-v", "1", str(clean), "-v", f"{gain:.6f}", str(noise), str(out)])
    noise.unlink()
    return out


def padded(clean: Path, out: Path, lead_s: float, trail_s: float) -> Path:
    """Silence before and after (what a VAD must cut away)."""
    _run(["sox", str(clean), str(out), "pad", f"{lead_s}", f"{trail_s}"])
    return out


def joined(parts: list[Path], out: Path, pause_s: float) -> Path:
    """The parts one after another with ``pause_s`` of silence between them."""
    gap = out.with_suffix(".gap.wav")
    _run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(gap), "trim", "0", f"{pause_s}"])
    seq: list[str] = []
    for i, part in enumerate(parts):
        seq += [str(gap)] if i else []
        seq.append(str(part))
    _run(["sox", *seq, str(out)])
    gap.unlink()
    return out


def corpus(root: Path, *, noisy: bool = True) -> list[Utterance]:
    """Every sentence in every voice (clean), and, if ``noisy``, every voice's first two sentences at each
    SNR. Files are cached in ``root`` (they are the same every time)."""
    root.mkdir(parents=True, exist_ok=True)
    out: list[Utterance] = []
    for v, (voice, wpm) in enumerate(VOICES):
        for s, text in enumerate(SENTENCES):
            clean = root / f"s{s}-{voice.replace('+', '_')}-{wpm}.wav"
            if not clean.exists():
                speak(text, clean, voice, wpm)
            out.append(Utterance(clean, text, voice, wpm))
            if noisy and s in (v % len(SENTENCES), (v + 4) % len(SENTENCES)):
                for snr in SNRS_DB:
                    noisy_path = clean.with_name(f"{clean.stem}-snr{snr}.wav")
                    if not noisy_path.exists():
                        with_noise(clean, noisy_path, snr)
                    out.append(Utterance(noisy_path, text, voice, wpm, snr))
    return out


def normalise(text: str) -> str:
    """Lower case, no punctuation, numbers as Whisper tends to write them left alone: WER's usual input."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())
