"""QoS 1 publishes waiting for their PUBACK: one future each, one timer for all of them.

aiomqtt waits for each acknowledgement with ``asyncio.wait_for`` (a task and a timer per publish) and
counts its pending calls by listing them on every publish; with a stream's chunks or a swarm's asks in
flight that was a fifth of the broker path's CPU. Here a publish costs a dict entry and a future, and a
single timer, armed only while something waits, fails what the broker has not acknowledged in time.
"""

from __future__ import annotations

import asyncio
import time

from edge_agent.errors import TransportError

__all__ = ["PendingAcks"]


class PendingAcks:
    def __init__(self, timeout_s: float, *, max_pending: int = 65_535) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        """Message ids are 16 bits: beyond this many in flight one would be reused."""
        self._waiting: dict[int, tuple[asyncio.Future[None], float]] = {}
        """Message id -> (its future, its deadline on the monotonic clock), oldest first."""
        self._timer: asyncio.TimerHandle | None = None
        self._broken: TransportError | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, mid: int) -> asyncio.Future[None]:
        """The future the PUBACK of ``mid`` resolves (TransportError if it does not come in time)."""
        if self._broken is not None:
            raise self._broken
        if mid in self._waiting:
            raise TransportError(f"message id {mid} already waits for its acknowledgement")
        if len(self._waiting) >= self.max_pending:
            raise TransportError(f"{len(self._waiting)} publishes wait for the broker: not sending more")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[mid] = (future, time.monotonic() + self.timeout_s)
        if self._timer is None:
            self._timer = loop.call_later(self.timeout_s, self._expire)
        return future

    def acked(self, mid: int) -> None:
        entry = self._waiting.pop(mid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(None)

    def fail_all(self, error: TransportError) -> None:
        """The connection is gone: nothing that waits will be acknowledged, and nothing new may wait."""
        self._broken = error
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # a caller that was cancelled meanwhile must not make asyncio warn
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._waiting:
            mid, (future, deadline) = next(iter(self._waiting.items()))
            if deadline > now:  # deadlines grow with insertion order: the rest are younger
                self._timer = asyncio.get_running_loop().call_later(deadline - now, self._expire)
                return
            del self._waiting[mid]
            if not future.done():
                future.set_exception(
                    TransportError(f"the broker did not acknowledge a publish in {self.timeout_s:g} s")
                )
                future.exception()
