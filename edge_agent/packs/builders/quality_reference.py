"""Record a quantized pack's quality reference (``quality.json``) while building it.

The expected answers come from the unquantized graphs (fp32 arithmetic is the same on every ISA, up to
rounding); the builder then runs the quantized pack on this CPU, refuses to write a pack that is already
wrong here (``cap``), and records the worst case it measured plus the task's ``allowance`` as the
threshold every other host must meet (``edge_agent.packs.host_gate``).
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent.errors import BuildError
from edge_agent.models.quality import (
    QUALITY_FILE,
    Metric,
    QualityCase,
    QualityReference,
)
from edge_agent.packs.host_gate import host_key, measure
from edge_agent.tasks import Task

__all__ = ["INPUTS", "float_pack", "record"]

INPUTS = Path(__file__).parent / "quality_inputs"
"""Committed hard inputs (speech made by benchmarks/rigs/quality_clips.py, byte-identical every time)."""


@contextmanager
def float_pack(out: Path) -> Iterator[Path]:
    """A scratch directory beside ``out`` for the unquantized graphs the reference answers come from;
    removed afterwards, whatever happens."""
    scratch = out.parent / f".{out.name}-float"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def record(
    *,
    out_dir: Path,
    task: Task,
    task_info: dict[str, Any],
    metric: Metric,
    cases: list[QualityCase],
    allowance: float,
    cap: float,
    reference: str,
    threads: int = 2,
) -> QualityReference:
    """Measure the pack in ``out_dir`` against ``cases`` here; write and return its ``quality.json``."""
    probe = QualityReference(
        metric=metric, cases=cases, threshold=cap, built_score=0.0, built_on="-", reference=reference
    )
    verdict = measure(out_dir, task, task_info, probe, threads)
    if verdict.worst < cap:
        raise BuildError(
            f"{out_dir.name} is wrong on this CPU ({platform.machine()}): {verdict.summary()} "
            f"against {reference}; scores {verdict.scores}"
        )
    threshold = max(verdict.worst - allowance, cap)
    ref = probe.model_copy(
        update={"threshold": round(threshold, 4), "built_score": verdict.worst, "built_on": host_key()}
    )
    (out_dir / QUALITY_FILE).write_text(ref.model_dump_json(indent=1), encoding="utf-8")
    return ref
