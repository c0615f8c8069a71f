"""The quality gate on this host: run a pack's reference inputs once per (pack, CPU, runtime) and remember.

A pack built and checked on one machine says nothing about another (``quality`` says why). Before the
planner may choose a pack that carries ``quality.json``, this host runs its reference inputs through the
real engine and compares with the recorded answers; a pack that fails here is rejected with a one-line
warning and the planner falls back (another variant, or offload). Verdicts are kept beside the store,
keyed by the pack's file digests, this CPU's instruction sets and the runtime versions, so a new CPU, a
new onnxruntime or a new pack is checked again, and nothing else is.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import PackError
from edge_agent.models.quality import (
    QUALITY_FILE,
    QualityReference,
    QualityVerdict,
    case_score,
    judge,
)
from edge_agent.models.selection import Plan, plan_for_profile
from edge_agent.models.store import InstalledPack, PackStore
from edge_agent.profiles.detect import cpuinfo
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.tasks import Task

__all__ = ["GateResult", "HostGate", "gated_plan", "host_key", "measure", "read_reference"]

log = logging.getLogger(__name__)

CACHE_FILE = "quality-gate.json"
MAX_CACHED = 128

# The CPU features that change which int8/fp32 kernels onnxruntime's MLAS picks (x86 and ARM spellings).
_KERNEL_FLAGS = frozenset(
    {
        "sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
        "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile", "avx512_fp16", "avx_vnni_int8",
        "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16", "fphp", "asimdhp",
    }
)  # fmt: skip


def _cpu_flags() -> tuple[str, list[str]]:
    info = cpuinfo()
    model = info.get("model name") or info.get("Hardware") or info.get("CPU part") or platform.machine()
    flags = sorted(set((info.get("flags") or info.get("Features") or "").split()) & _KERNEL_FLAGS)
    return model, flags


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def host_key() -> str:
    """What decides whether a verdict still holds here: CPU model and kernel-relevant flags, runtimes."""
    model, flags = _cpu_flags()
    runtimes = f"onnxruntime {_version('onnxruntime')}, onnxruntime-genai {_version('onnxruntime-genai')}"
    return f"{platform.machine()} {model} [{' '.join(flags)}] {runtimes}"


def read_reference(pack: InstalledPack) -> QualityReference | None:
    """The pack's ``quality.json``, or None for a pack built without one (an fp32 pack, an old pack)."""
    if not any(f.path == QUALITY_FILE for f in pack.manifest.files):
        return None
    path = pack.path / QUALITY_FILE
    try:
        return QualityReference.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise PackError(f"{pack.pack_id}: {QUALITY_FILE} is unreadable: {exc}") from None


# -- running the reference inputs ---------------------------------------------------------------------------


def _outputs(
    pack_dir: Path, task: Task, info: dict[str, Any], ref: QualityReference, threads: int
) -> dict[str, Any]:
    """What the pack answers here to every reference input (blocking: loads the real engine)."""
    cases = ref.cases
    if task == "transcribe":
        from edge_agent.audio.decode import load_audio
        from edge_agent.engines.transcribe import TranscribeEngine

        asr = TranscribeEngine(pack_dir, info, threads)
        out: dict[str, Any] = {}
        for case in cases:
            audio = load_audio(pack_dir / str(case.audio), name=str(case.audio), max_seconds=30)
            out[case.name] = asr.teacher_forced(audio.samples, case.expect_tokens or [])
        return out
    if task == "translate":
        from edge_agent.engines.translate import TranslateEngine

        mt = TranslateEngine(pack_dir, info, threads)
        return {c.name: mt.teacher_forced(str(c.text), c.expect_tokens or []) for c in cases}
    if task == "embed":
        from edge_agent.engines.embed import EmbedEngine

        vectors = EmbedEngine(pack_dir, info, threads).embed_array([str(c.text) for c in cases])
        return {c.name: [float(x) for x in v] for c, v in zip(cases, vectors, strict=True)}
    if task == "generate":
        from edge_agent.engines.generate import GenerateEngine

        llm = GenerateEngine(pack_dir, info, threads)
        return {c.name: llm.teacher_forced(str(c.text), c.expect_tokens or []) for c in cases}
    raise PackError(f"{pack_dir.name}: no quality gate for task {task}")


def measure(
    pack_dir: Path, task: Task, task_info: dict[str, Any], ref: QualityReference, threads: int = 1
) -> QualityVerdict:
    """Run ``ref`` through the pack in ``pack_dir`` here and judge it."""
    outputs = _outputs(pack_dir, task, task_info, ref, threads)
    scores = {c.name: round(case_score(ref.metric, c, outputs[c.name]), 4) for c in ref.cases}
    return judge(ref, scores)


# -- remembering verdicts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    pack_id: str
    verdict: QualityVerdict | None
    """None: the pack carries no reference (not gated)."""
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict is None or self.verdict.passed

    def reason(self) -> str:
        if self.verdict is None:
            return "no quality reference (not gated)"
        return f"quality gate on this CPU {self.verdict.summary()}"


class HostGate:
    """Verdicts for this host, cached in ``<store>/quality-gate.json`` (bounded: the newest MAX_CACHED)."""

    def __init__(
        self, store: PackStore, *, threads: int = 1, runner: Callable[..., QualityVerdict] = measure
    ) -> None:
        self.path = store.root / CACHE_FILE
        self.threads = threads
        self._run = runner
        self._host = host_key()

    def _key(self, pack: InstalledPack) -> str:
        files = sorted((f.path, f.sha256) for f in pack.manifest.files)
        blob = json.dumps([self._host, pack.pack_id, files], separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def _load(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _save(self, entries: dict[str, Any]) -> None:
        keep = dict(list(entries.items())[-MAX_CACHED:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quality-gate-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(keep, fh, indent=1)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only store still works; the gate runs again next time
            log.debug("could not save quality verdicts to %s: %s", self.path, exc)

    def check(self, pack: InstalledPack) -> GateResult:
        ref = read_reference(pack)
        if ref is None:
            return GateResult(pack.pack_id, None)
        key = self._key(pack)
        entries = self._load()
        if key in entries:
            try:
                return GateResult(pack.pack_id, QualityVerdict.model_validate(entries[key]["verdict"]), True)
            except (ValidationError, KeyError, TypeError):
                pass
        try:
            verdict = self._run(pack.path, pack.manifest.task, pack.manifest.task_info, ref, self.threads)
        except Exception as exc:  # whatever stops the pack running here keeps it out of the plan
            raise PackError(f"{pack.pack_id}: its quality reference could not run here: {exc}") from None
        entries.pop(key, None)
        entries[key] = {"pack_id": pack.pack_id, "host": self._host, "verdict": verdict.model_dump()}
        self._save(entries)
        return GateResult(pack.pack_id, verdict)


def gated_plan(
    profile: FirmwareProfile,
    packs: Iterable[InstalledPack],
    gate: HostGate | None,
    *,
    on_result: Callable[[GateResult], None] | None = None,
) -> tuple[Plan, dict[str, GateResult]]:
    """The profile's plan, with every chosen pack checked on this host first: a pack that fails is taken
    out and the task planned again (the next variant, or offload), until every chosen pack has passed."""
    by_id = {p.pack_id: p for p in packs}
    manifests = [p.manifest for p in by_id.values()]
    results: dict[str, GateResult] = {}
    failed: dict[str, str] = {}
    while True:
        plan = plan_for_profile(profile, manifests, failed)
        fresh = [tp.chosen_id for tp in plan.tasks.values() if tp.chosen_id and tp.chosen_id not in results]
        if gate is None or not fresh:
            return plan, results
        for pack_id in fresh:
            try:
                result = gate.check(by_id[pack_id])
            except PackError as exc:
                log.warning("%s; not using it here", exc)
                failed[pack_id] = str(exc)
                results[pack_id] = GateResult(pack_id, None)
                continue
            results[pack_id] = result
            if on_result is not None:
                on_result(result)
            if not result.passed:
                log.warning("%s %s; not using it on this CPU", pack_id, result.reason())
                failed[pack_id] = f"failed its {result.reason()}"
