"""The fuzz harness of issue 21: every decoder and handler that takes peer input, driven through the
real endpoint on the in-memory mesh (and the real Wyoming server), with invariants after each input:
no loop dies, the device keeps serving, trusted state unchanged.

Targets (one per input path; `TARGETS`): ``envelope`` (raw frames), ``message`` (every Message type),
``presence``, ``sessions`` (envelope v2: data and handshake frames), ``corrections``, ``memory``, ``responses`` (answers to this device's own requests),
``holdings``, ``manifests``, ``chunks``, ``wyoming``. Built on Hypothesis: structure-aware inputs from
valid documents (`hostile`), shrinking and exact replay of failures. The CI form is
tests/test_fuzz.py; the long form ``python -m benchmarks.fuzz`` (``hearth bench fuzz``).
"""

from __future__ import annotations

from benchmarks.fuzzing.driver import Outcome, Session, campaign, fuzz, seeded_draws
from benchmarks.fuzzing.mesh_targets import (
    CorrectionsTarget,
    EnvelopeTarget,
    MemoryTarget,
    MessageTarget,
    PresenceTarget,
    ResponsesTarget,
)
from benchmarks.fuzzing.rig import Broken, Rig
from benchmarks.fuzzing.session_targets import SessionsTarget
from benchmarks.fuzzing.target import Target
from benchmarks.fuzzing.update_targets import ChunksTarget, HoldingsTarget, ManifestsTarget
from benchmarks.fuzzing.wyoming_target import WyomingTarget

__all__ = ["TARGETS", "Broken", "Outcome", "Rig", "Session", "Target", "campaign", "fuzz", "seeded_draws"]

TARGETS: dict[str, type[Target]] = {
    t.name: t
    for t in (
        EnvelopeTarget,
        MessageTarget,
        PresenceTarget,
        CorrectionsTarget,
        MemoryTarget,
        ResponsesTarget,
        SessionsTarget,
        HoldingsTarget,
        ManifestsTarget,
        ChunksTarget,
        WyomingTarget,
    )
}
