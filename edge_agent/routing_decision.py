"""A routing decision: every candidate for one request, ranked by expected completion time or excluded
with the reason, and who served each attempt. Plain data the router fills in and the CLI explains
(`hearth chat --explain`, `hearth peers`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.mesh.peers import Peer
from edge_agent.tasks import Task

__all__ = ["UNMEASURED", "UNMEASURED_MS", "Attempt", "Candidate", "Decision"]

UNMEASURED_MS = 1e9
"""Where this device ranks when its own speed is not measured yet: after every measured candidate."""
UNMEASURED = "speed not measured yet"


@dataclass
class Candidate:
    name: str
    peer: Peer | None  # None: this device
    expected_ms: float
    detail: str
    excluded: str | None = None

    @property
    def where(self) -> str:
        return "local" if self.peer is None else f"peer {self.name}"

    @property
    def estimate(self) -> str:
        """``expected 120 ms (how)``, or that there is no estimate (never the ranking sentinel as a time)."""
        if not self.detail:  # excluded before estimating (policy, silent, not serving it)
            return "not estimated"
        if self.expected_ms >= UNMEASURED_MS:
            return UNMEASURED
        return f"expected {self.expected_ms:.0f} ms ({self.detail})"


@dataclass
class Decision:
    task: Task
    ranked: list[Candidate]
    excluded: list[Candidate]

    @property
    def reason(self) -> str:
        if not self.ranked:
            why = "; ".join(f"{c.name}: {c.excluded}" for c in self.excluded) or "no candidates"
            return f"nowhere to run {self.task}: {why}"
        best = self.ranked[0]
        return f"{best.where}: {best.estimate}"

    def explain(self) -> list[str]:
        lines = [f"{c.where}: {c.estimate}" for c in self.ranked]
        lines += [f"{c.where}: excluded, {c.excluded}" for c in self.excluded]
        return lines


@dataclass
class Attempt:
    served_by: str
    started: float
    tokens_before: int
    error: str | None = None
