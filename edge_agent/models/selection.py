"""Which pack variant a device loads for each task: a pure function of (profile, available packs).

The rules, in order, for every task:

1. the quantization must be allowed by the profile (unless the model comes in no allowed format at all:
   then its one format is judged on the other rules, as the fp32-only Silero VAD is);
2. every ISA feature the pack needs must be present on the CPU;
3. one of the pack's execution providers must be allowed by the profile;
4. its measured peak RAM must fit the profile's model RAM budget;
5. it must not have failed its quality gate on this host (``host_gate``: int8 kernels differ by CPU).

Among the packs that pass, the profile's quantization preference decides (then the smaller footprint).
When packs exist for a task but none passes, the task is *offload only*: the router sends it to a peer.

A plan is keyed by *slot*: the task, or for translation the task and its language pair
(``translate:en-pt``), since each direction is its own model and a device may hold one and not the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.models.pack import PackManifest
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.tasks import TASKS, Task

Mode = Literal["local", "offload-only", "unavailable"]


def slot_of(task: Task, pair: str | None = None) -> str:
    """Plan key: ``generate``, ``embed``, or ``translate:en-pt``."""
    return f"{task}:{pair}" if pair else task


def pack_slot(pack: PackManifest) -> str:
    pair = pack.task_info.get("pair") if pack.task == "translate" else None
    return slot_of(pack.task, str(pair) if pair else None)


@dataclass(frozen=True)
class Rejection:
    pack_id: str
    reason: str


@dataclass(frozen=True)
class TaskPlan:
    task: Task
    mode: Mode
    chosen: PackManifest | None
    reason: str
    rejected: tuple[Rejection, ...] = ()
    slot: str = ""

    @property
    def pair(self) -> str | None:
        return self.slot.partition(":")[2] or None

    @property
    def chosen_id(self) -> str | None:
        return self.chosen.pack_id if self.chosen else None


@dataclass(frozen=True)
class Plan:
    profile_id: str
    budget_mb: int
    tasks: dict[str, TaskPlan] = field(default_factory=dict)
    """By slot (see ``slot_of``)."""

    @property
    def resident_mb(self) -> float:
        """RAM if every locally planned model were loaded at once."""
        return sum(tp.chosen.peak_ram_mb for tp in self.tasks.values() if tp.chosen)

    def for_task(self, task: Task, pair: str | None = None) -> TaskPlan:
        slot = slot_of(task, pair)
        what = f"{task} {pair.replace('-', '→')}" if pair else task
        return self.tasks.get(slot) or TaskPlan(
            task, "unavailable", None, f"no pack built for {what}", slot=slot
        )

    def pairs(self, task: Task = "translate", mode: Mode | None = "local") -> list[str]:
        """Language pairs planned for ``task`` (those in ``mode``; ``None`` for any)."""
        return sorted(tp.pair for tp in self.tasks.values()
                      if tp.task == task and tp.pair and (mode is None or tp.mode == mode))  # fmt: skip


def _rejection(
    profile: FirmwareProfile, pack: PackManifest, only_format: bool = False, failed: str | None = None
) -> str | None:
    if failed is not None:
        return failed
    q = pack.variant.quantization
    if q not in profile.quantizations and not only_format:
        return f"{q} is not allowed on {profile.id} (allows {', '.join(profile.quantizations)})"
    missing = sorted(set(pack.requirements.isa) - set(profile.cpu.isa))
    if missing:
        return f"needs ISA {', '.join(missing)}, which {profile.cpu.model} lacks"
    if not set(pack.requirements.execution_providers) & set(profile.execution_providers):
        return (
            f"runs on {', '.join(pack.requirements.execution_providers)}, "
            f"profile allows {', '.join(profile.execution_providers)}"
        )
    budget = profile.model_ram_budget_mb
    if pack.peak_ram_mb > budget:
        return (
            f"needs {pack.peak_ram_mb:.0f} MB peak RAM, budget is {budget} MB "
            f"({profile.model_ram_share:.0%} of {profile.ram_mb} MB)"
        )
    cap = profile.task_ram_mb.get(pack.task)
    if cap is not None and pack.peak_ram_mb > cap:
        return f"needs {pack.peak_ram_mb:.0f} MB peak RAM, {profile.id} gives {pack.task} at most {cap} MB"
    return None


def plan_task(
    profile: FirmwareProfile,
    task: Task,
    packs: Iterable[PackManifest],
    pair: str | None = None,
    failed: Mapping[str, str] | None = None,
) -> TaskPlan:
    slot = slot_of(task, pair)
    candidates = [p for p in packs if pack_slot(p) == slot]
    if not candidates:
        return TaskPlan(task, "unavailable", None, "no pack built for this task", slot=slot)
    fitting: list[PackManifest] = []
    rejected: list[Rejection] = []
    # A model made in one format only (the 2 MB Silero VAD is fp32) is judged on RAM, ISA and EPs alone:
    # the format list steers the choice between variants, it should not take a whole task away.
    only_format = not any(p.variant.quantization in profile.quantizations for p in candidates)
    for pack in sorted(candidates, key=lambda p: p.pack_id):
        why = _rejection(profile, pack, only_format, (failed or {}).get(pack.pack_id))
        if why is None:
            fitting.append(pack)
        else:
            rejected.append(Rejection(pack.pack_id, why))
    if not fitting:
        return TaskPlan(task, "offload-only", None, "no variant fits this device", tuple(rejected), slot)
    order = {q: i for i, q in enumerate(profile.quantizations)}
    best = min(fitting, key=lambda p: (order.get(p.variant.quantization, len(order)), p.peak_ram_mb))
    rank = order.get(best.variant.quantization, len(order))
    preferred = ", ".join(profile.quantizations)
    if only_format:
        choice = f"the only format this model comes in (the profile prefers {preferred})"
    else:
        choice = ("first choice" if rank == 0 else f"best fit (choice {rank + 1})") + (
            f" in the profile's preference [{preferred}]"
        )
    budget = profile.model_ram_budget_mb
    why_best = f"{best.variant.quantization}: {best.peak_ram_mb:.0f} MB of {budget} MB budget; {choice}"
    others = tuple(Rejection(p.pack_id, "fits, but less preferred here") for p in fitting if p is not best)
    return TaskPlan(task, "local", best, why_best, tuple(rejected) + others, slot)


def plan_for_profile(
    profile: FirmwareProfile, packs: Iterable[PackManifest], failed: Mapping[str, str] | None = None
) -> Plan:
    """Decide, for each task that has packs, what this device runs locally or offloads. ``failed`` maps
    pack ids this host must not use to why (their quality gate failed here: ``host_gate``)."""
    pack_list = list(packs)
    slots = sorted({pack_slot(p) for p in pack_list}, key=lambda s: (TASKS.index(s.split(":")[0]), s))
    tasks = {}
    for slot in slots:
        task, _, pair = slot.partition(":")
        tasks[slot] = plan_task(profile, task, pack_list, pair or None, failed)  # type: ignore[arg-type]
    return Plan(profile.id, profile.model_ram_budget_mb, tasks)
