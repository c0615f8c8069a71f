"""The endpoint's lifetime: the background tasks it owns, started under its supervisor and stopped
(all of them, time-bounded) when it closes. Every layer and feature spawns through one `Lifetime`,
so nothing outlives the endpoint and every failure is counted where the health view shows it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from edge_agent.supervision import Supervisor

__all__ = ["Lifetime", "stop_tasks"]

log = logging.getLogger(__name__)


async def stop_tasks(tasks: list[asyncio.Task[Any]], patience_s: float = 15.0) -> None:
    """Cancel ``tasks`` and wait for them, re-cancelling any that swallowed the cancel (3.11's
    asyncio.wait_for can), so closing an endpoint never hangs on one of its own tasks."""
    pending = {t for t in tasks if not t.done() and t is not asyncio.current_task()}
    end = time.monotonic() + patience_s
    while pending and time.monotonic() < end:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in pending:
        log.warning("task %s did not stop within %g s; leaving it", task.get_name(), patience_s)


class Lifetime:
    """Tasks that live as long as the endpoint: its loops and the short jobs of layers and features."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        """Set once the endpoint closes: loops check it (a swallowed cancel must not keep them going)."""

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` until it ends or the endpoint closes; a failure is counted under "mesh-tasks"."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)  # a C method: nothing of ours runs per task's end
        self.supervisor.watch(task, "mesh-tasks")
        return task

    def start_loop(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """A long-lived loop, restarted by the supervisor with backoff until the endpoint closes."""
        supervised = self.supervisor.supervise(name, loop, stopping=lambda: self.closing)
        self.tasks.add(asyncio.create_task(supervised, name=name))

    async def stop(self, *also: asyncio.Task[Any]) -> None:
        await stop_tasks(list(self.tasks) + list(also))
        self.tasks.clear()
