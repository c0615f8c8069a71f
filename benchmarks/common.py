"""Benchmark plumbing: engines in separate worker processes, interleaved runs, medians, reports."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.profiles.detect import cpuinfo


class Worker:
    """One engine in its own process (so its peak RSS is its own), driven by JSON lines."""

    def __init__(self, kind: str, **params: Any) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error")
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", kind, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker '{self.kind}' exited (code {self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"benchmark worker '{self.kind}': {result['error']}")
        return result

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        stats = self.call(op="memory")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        return stats


def interleaved(workers: dict[str, Worker], runs: int, **msg: Any) -> dict[str, list[dict[str, Any]]]:
    """Run ``msg`` on every worker ``runs`` times, alternating which goes first, so drift hits all equally."""
    order = list(workers.items())
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    for r in range(runs):
        for name, worker in order if r % 2 == 0 else order[::-1]:
            results[name].append(worker.call(op="run", **msg))
    return results


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine() -> dict[str, Any]:
    info = cpuinfo()
    return {
        "cpu": info.get("model name") or platform.processor(),
        "isa": cpu_features(info),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(),
    }


NOTABLE_FEATURES = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "aes",
    "asimd",
    "asimddp",
    "sve",
)
"""The CPU flags the figures depend on: int8 kernels (VNNI, AMX, ARM dot product), AEAD speed (AES)."""


def cpu_features(info: dict[str, str] | None = None) -> list[str]:
    """Which of `NOTABLE_FEATURES` this CPU has (x86 "flags", ARM "Features" in /proc/cpuinfo)."""
    info = cpuinfo() if info is None else info
    flags = (info.get("flags") or info.get("Features") or "").split()
    return [f for f in NOTABLE_FEATURES if f in flags]


def write_report(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")


def bar_plot(
    path: Path, title: str, metrics: dict[str, tuple[float, float, str]], labels: tuple[str, str]
) -> None:
    """One panel per metric: ours vs peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    for ax, (metric, (ours, peer, unit)) in zip(
        axes if len(metrics) > 1 else [axes], metrics.items(), strict=True
    ):
        bars = ax.bar(labels, [ours, peer], color=["#d9480f", "#868e96"])
        ax.set_title(f"{metric} ({unit})", fontsize=10)
        ax.bar_label(bars, fmt="%.1f", fontsize=9)
        ax.margins(y=0.15)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
