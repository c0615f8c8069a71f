"""The pieces of one exchange, IO-free or nearly: a requester's open stream (reassembly, bounded
queue, failing once), the coalescing of a served stream's chunks, and what a requester may learn of
our failure. The exchange layer (`exchanges.py`) moves them over the mesh."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from pydantic import ValidationError

from edge_agent.errors import (
    BudgetExceededError,
    InvalidRequestError,
    LinkDownError,
    NoLocalModelError,
    PeerLostError,
    StreamBrokenError,
)
from edge_agent.mesh.lifetime import stop_tasks
from edge_agent.mesh.protocol import Accepted, Chunk, Failure, FailureCode
from edge_agent.mesh.rpc import StreamReassembler, merge_chunks

__all__ = ["OpenStream", "coalesced", "failure_of"]

_SAFE_MESSAGES: set[FailureCode] = {"invalid", "not-served", "busy", "deadline", "forbidden"}
Broken = PeerLostError | LinkDownError
"""Why a stream ended early: the peer was lost, or our own link dropped."""


@dataclass
class OpenStream:
    """Our request to ``peer``, waiting for its answer: chunks in order, or the reason it broke."""

    peer: str
    reassembler: StreamReassembler
    queue: asyncio.Queue[Chunk | Accepted | Failure | Broken] = field(default_factory=asyncio.Queue)
    broken: bool = False
    path: str = "broker"
    """The path its request went on ("direct": a silent or broken link resumes through the broker)."""

    def fail(self, error: Broken) -> None:
        if not self.broken:
            self.broken = True
            self.queue.put_nowait(error)

    def deliver(self, msg: Chunk | Accepted | Failure, max_queue: int) -> None:
        if self.broken:
            return
        if self.queue.qsize() >= max_queue:
            self.fail(
                StreamBrokenError(f"stream from {self.peer[:8]} outran its reader ({max_queue} queued)")
            )
            return
        if not isinstance(msg, Chunk):
            self.queue.put_nowait(msg)
            return
        try:
            ready = self.reassembler.push(msg)
        except StreamBrokenError as exc:
            self.fail(exc)
            return
        for chunk in ready:
            self.queue.put_nowait(chunk)


def failure_of(exc: BaseException) -> tuple[FailureCode, str]:
    """What a requester learns about our failure: the code, and text only for its own mistakes."""
    if isinstance(exc, InvalidRequestError | ValidationError):
        code: FailureCode = "invalid"
    elif isinstance(exc, NoLocalModelError):
        code = "not-served"
    elif isinstance(exc, BudgetExceededError):
        code = "busy"
    elif isinstance(exc, TimeoutError):
        code = "deadline"
    else:
        return "internal", "internal error on the serving device (see its log)"
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        return code, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"[:500]
    return code, (str(exc)[:500] or type(exc).__name__) if code in _SAFE_MESSAGES else code


async def coalesced(source: AsyncGenerator[Chunk, None], window_s: float) -> AsyncGenerator[Chunk, None]:
    """Chunks produced within ``window_s`` of each other travel as one: fewer frames, and frame
    sizes that no longer follow each token's length."""
    if window_s <= 0:
        async with contextlib.aclosing(source) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue(maxsize=256)

    async def pump() -> None:
        try:
            async with contextlib.aclosing(source) as chunks:
                async for chunk in chunks:
                    await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)

    producer = asyncio.create_task(pump())
    try:
        done = False
        while not done:
            first = await queue.get()
            if first is None:
                return
            if isinstance(first, BaseException):
                raise first
            batch = [first]
            end = time.monotonic() + window_s
            while not batch[-1].final and len(batch) < 64:
                remaining = end - time.monotonic()
                if remaining <= 0 and queue.empty():
                    break
                try:
                    async with asyncio.timeout(max(0.0, remaining)):
                        item = await queue.get()
                except TimeoutError:
                    break
                if item is None:
                    done = True
                    break
                if isinstance(item, BaseException):
                    yield merge_chunks(batch)
                    raise item
                if item.final:
                    # The end travels on its own, as before coalescing: the streamed text is
                    # complete before the stats arrive, whatever the timing.
                    yield merge_chunks(batch)
                    batch = [item]
                    break
                batch.append(item)
            yield merge_chunks(batch)
            if batch[-1].final:
                return
    finally:
        await stop_tasks([producer])
