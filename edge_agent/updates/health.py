"""The health check of a model update: load the new pack and run one known inference.

The publisher records what the pack answers to a fixed input (`hearth models publish --health TEXT`);
a receiving device activates the pack only if it answers the same (or, for `contains`, includes it),
so a pack that loads but computes garbage (a bad quantization, the wrong vocabulary) is rolled back.
What the input becomes and how the answer reads are the task's (`TaskSpec.health` in the task
registry), so every task the registry runs has one, `transcribe` included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.engines.base import EngineOptions, engine_class
from edge_agent.errors import EngineError
from edge_agent.sync.manifest import HealthCheck
from edge_agent.task_specs import REGISTRY
from edge_agent.tasks import Task

__all__ = ["probe", "verdict"]


def probe(pack_dir: Path, task: Task, task_info: dict[str, Any], text: str, pair: str | None) -> str:
    """Load the pack in ``pack_dir`` and run ``text`` through it once (blocking; greedy, so repeatable)."""
    spec = REGISTRY.get(task)
    if spec is None or spec.health is None:
        raise EngineError(f"no health probe for task {task}")
    engine = engine_class(task).from_pack(pack_dir, task_info, EngineOptions(threads=1))
    request = spec.health.request(text, pair)
    return spec.health.answer(list(engine.run(request)))


def verdict(check: HealthCheck, output: str) -> str | None:
    """None if ``output`` passes ``check``; else why not."""
    if check.match == "exact" and output != check.expect:
        return f"answered {output[:80]!r}, the publisher recorded {check.expect[:80]!r}"
    if check.match == "contains" and check.expect not in output:
        return f"answered {output[:80]!r}, which lacks {check.expect[:80]!r}"
    return None
