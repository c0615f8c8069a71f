"""Supervision: no input from a peer, and no bug it triggers, may end one of the agent's loops.

Every long-lived loop (the mesh connection, housekeeping, the direct-link server, model updates, the
Wyoming and local-socket servers) runs under `Supervisor.supervise`: an unexpected exception is logged
with its context, counted, and the loop restarted after a backoff that grows while it keeps failing and
resets once it has run cleanly for a while. Per-item work inside a loop (one frame, one message, one
connection) runs under `Supervisor.guard`: the item is dropped, counted and logged, and the loop goes
on. Logging is rate-limited per (loop, error kind), so a peer repeating a poisoned message cannot fill
the disk; the counts stay exact and are shown by `hearth peers` and Home Assistant's diagnostic sensor.

Expected failures (a link that drops, a forged frame) are handled where they happen and never reach
the supervisor: what it counts is what nobody planned for, so a count above zero is worth reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

__all__ = ["HealthReport", "LoopHealth", "LoopState", "Supervisor"]

MAX_LOOPS = 64
"""Loops and guarded handlers one supervisor tracks (names come from code, never from peers)."""
MAX_REASONS = 32
"""Distinct drop reasons kept per loop; more are counted under "other"."""
LOG_EVERY_S = 60.0
"""After the first report of a (loop, reason), at most one line per this many seconds."""


class LoopState(enum.StrEnum):
    RUNNING = "running"
    BACKING_OFF = "backing-off"
    STOPPED = "stopped"


class LoopHealth(BaseModel):
    """One supervised loop: restarts after unexpected errors, and items it dropped, by reason."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(max_length=64)
    supervised: bool = True
    """False for a name that only counts dropped items (a handler, not a loop of its own)."""
    state: LoopState
    restarts: int = Field(ge=0)
    dropped: dict[str, int] = Field(default_factory=dict, max_length=MAX_REASONS + 1)
    last_error: str = Field(default="", max_length=300)


class HealthReport(BaseModel):
    """What `hearth peers` and Home Assistant show about this agent's own loops."""

    model_config = ConfigDict(frozen=True)

    loops: list[LoopHealth] = Field(default_factory=list, max_length=MAX_LOOPS)

    @property
    def restarts(self) -> int:
        return sum(loop.restarts for loop in self.loops)

    @property
    def dropped(self) -> int:
        return sum(sum(loop.dropped.values()) for loop in self.loops)


@dataclass
class _Loop:
    state: LoopState = LoopState.STOPPED
    supervised: bool = False
    restarts: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    last_error: str = ""


def _describe(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class Supervisor:
    """Restarts loops that fail unexpectedly and drops items that make them fail; counts both.

    ``initial_backoff_s`` doubles per consecutive failure up to ``max_backoff_s``; a loop that has run
    ``healthy_after_s`` without failing starts again from the initial backoff. ``clock`` and ``sleep``
    are the monotonic clock and the wait, replaceable in tests.
    """

    def __init__(
        self,
        *,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self._clock = clock
        self._sleep = sleep
        self._loops: dict[str, _Loop] = {}
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        """(loop, reason) -> (when last logged, how many since then): the rate limit on log lines."""

    # -- state ----------------------------------------------------------------------------------------

    def _loop(self, name: str) -> _Loop:
        loop = self._loops.get(name)
        if loop is None:
            if len(self._loops) >= MAX_LOOPS - 1:  # the last place is kept for "other"
                name = "other"
                loop = self._loops.get(name)
            if loop is None:
                loop = self._loops[name] = _Loop()
        return loop

    def report(self) -> HealthReport:
        return HealthReport(
            loops=[
                LoopHealth(
                    name=name,
                    supervised=loop.supervised,
                    state=loop.state,
                    restarts=loop.restarts,
                    dropped=dict(loop.dropped),
                    last_error=loop.last_error,
                )
                for name, loop in sorted(self._loops.items())
            ]
        )

    def restarts(self, name: str) -> int:
        loop = self._loops.get(name)
        return loop.restarts if loop is not None else 0

    def drops(self, name: str) -> Counter[str]:
        loop = self._loops.get(name)
        return Counter(loop.dropped) if loop is not None else Counter()

    # -- logging --------------------------------------------------------------------------------------

    def _should_log(self, name: str, reason: str) -> tuple[bool, int]:
        """Whether to write a line for this (loop, reason) now, and how many went unlogged before it."""
        key = (name, reason)
        now = self._clock()
        last = self._logged.get(key)
        if last is None:
            if len(self._logged) >= MAX_LOOPS * MAX_REASONS:
                self._logged.clear()  # bounded; the worst case is one extra line per key
            self._logged[key] = (now, 0)
            return True, 0
        when, quiet = last
        if now - when >= LOG_EVERY_S:
            self._logged[key] = (now, 0)
            return True, quiet
        self._logged[key] = (when, quiet + 1)
        return False, 0

    def _report(self, name: str, exc: BaseException, what: str) -> None:
        reason = type(exc).__name__
        first = (name, reason) not in self._logged
        write, quiet = self._should_log(name, reason)
        if not write:
            return
        more = f" ({quiet} more since the last report)" if quiet else ""
        if first:  # the whole traceback once: enough to find the bug
            log.error("%s: %s%s", name, what, more, exc_info=exc)
        else:
            log.warning("%s: %s: %s%s", name, what, _describe(exc), more)

    # -- per item -------------------------------------------------------------------------------------

    def drop(self, name: str, reason: str, exc: BaseException | None = None, what: str = "") -> None:
        """Count one item ``name`` set aside, and log it (rate-limited) when ``exc`` says why."""
        loop = self._loop(name)
        if reason not in loop.dropped and len(loop.dropped) >= MAX_REASONS:
            reason = "other"
        loop.dropped[reason] += 1
        if exc is not None:
            loop.last_error = _describe(exc)
            self._report(name, exc, what or "dropped an item")

    @contextlib.contextmanager
    def guard(self, name: str, what: str = "") -> Iterator[None]:
        """Run one item's handling; an unexpected exception drops that item instead of the loop.

        Cancellation and KeyboardInterrupt pass through (they are how loops stop)."""
        try:
            yield
        except Exception as exc:
            self.drop(name, type(exc).__name__, exc, what or "dropped an item that failed")

    def watch(self, task: asyncio.Task[Any], name: str) -> None:
        """Count and log an unexpected failure of a fire-and-forget ``task`` (instead of asyncio's
        "exception was never retrieved" at garbage collection)."""

        def done(finished: asyncio.Task[Any]) -> None:
            if finished.cancelled():
                return
            exc = finished.exception()
            if exc is not None:
                self.drop(name, type(exc).__name__, exc, f"task {finished.get_name()} failed")

        task.add_done_callback(done)

    # -- loops ----------------------------------------------------------------------------------------

    async def supervise(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run ``body`` until it returns with ``stopping()`` true, or until cancelled.

        An exception restarts it after the backoff; so does a return while not stopping (a loop that
        ends by itself has stopped serving). Cancellation ends supervision at once."""
        loop = self._loop(name)
        loop.supervised = True
        backoff = self.initial_backoff_s
        try:
            while True:
                loop.state = LoopState.RUNNING
                started = self._clock()
                try:
                    await body()
                except Exception as exc:
                    if stopping():
                        return
                    loop.last_error = _describe(exc)
                    self._report(name, exc, "failed unexpectedly; restarting")
                else:
                    if stopping():
                        return
                    loop.last_error = "returned while the agent was running"
                    log.error("%s: returned while the agent was running; restarting", name)
                loop.restarts += 1
                if self._clock() - started >= self.healthy_after_s:
                    backoff = self.initial_backoff_s
                loop.state = LoopState.BACKING_OFF
                await self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                if stopping():
                    return
        finally:
            loop.state = LoopState.STOPPED
