"""Several transports as one: a device on MQTT *and* CoAP (a hub that bridges members of both kinds).

Each frame goes on the transport chosen for its recipient (CoAP for a member that announces a CoAP
contact, MQTT otherwise), and on the other one if that fails. Announcements go on all of them; what
arrives on any is read as one stream. One transport failing does not take the others down: it is
reopened in the background (backing off), and the whole only fails when every part has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from edge_agent.errors import TransportError
from edge_agent.mesh.interfaces import Address, Connector, Incoming, Transport, TransportState

__all__ = ["MultiConnector", "MultiTransport", "Order"]

log = logging.getLogger(__name__)

Order = Callable[[str], Sequence[int]]
"""Which parts to try for a recipient, by index, in order (every part should appear)."""

_RETRY_MIN_S, _RETRY_MAX_S = 0.5, 30.0


class MultiConnector(Connector):
    def __init__(self, parts: Sequence[tuple[str, Connector]], order: Order) -> None:
        if not parts:
            raise ValueError("at least one transport")
        self.parts = list(parts)
        self.order = order

    def connect(self, departure_notice: bytes | None) -> Transport:
        return MultiTransport(self.parts, self.order, departure_notice)


class _Part:
    def __init__(self, name: str, connector: Connector) -> None:
        self.name = name
        self.connector = connector
        self.transport: Transport | None = None
        """Open and read, or None while down."""


class MultiTransport(Transport):
    def __init__(self, parts: Sequence[tuple[str, Connector]], order: Order, notice: bytes | None) -> None:
        self.parts = [_Part(name, connector) for name, connector in parts]
        self.order = order
        self.notice = notice
        self.state = TransportState.UNOPENED
        self._queue: asyncio.Queue[Incoming | TransportError] = asyncio.Queue(1024)
        self._tasks: set[asyncio.Task[None]] = set()
        self._announced: bytes | None = None
        """The latest announcement, made again on a part that comes back."""

    def _up(self) -> list[Transport]:
        return [p.transport for p in self.parts if p.transport is not None]

    async def open(self) -> None:
        self.state = TransportState.OPEN
        results = await asyncio.gather(*(self._open(part) for part in self.parts), return_exceptions=True)
        if not self._up():
            await self.aclose()
            reasons = "; ".join(f"{p.name}: {r}" for p, r in zip(self.parts, results, strict=True))
            raise TransportError(f"no transport could connect ({reasons})")
        for part in self.parts:
            if part.transport is None:
                self._spawn(self._reopen(part))

    async def _open(self, part: _Part) -> None:
        transport = part.connector.connect(self.notice)
        try:
            await transport.open()
        except TransportError as exc:
            log.warning("the %s transport could not connect (%s); retrying in the background", part.name, exc)
            raise
        part.transport = transport
        self._spawn(self._read(part, transport))

    async def _read(self, part: _Part, transport: Transport) -> None:
        try:
            async for item in transport.incoming():
                await self._queue.put(item)
        except TransportError as exc:
            if self.state is not TransportState.OPEN:
                return
            log.warning("the %s transport dropped (%s)", part.name, exc)
        finally:
            if part.transport is transport:
                part.transport = None
                with contextlib.suppress(TransportError):
                    await transport.aclose()
        if self.state is not TransportState.OPEN:
            return
        if not self._up():
            await self._queue.put(TransportError(f"every transport is down (last: {part.name})"))
            return
        self._spawn(self._reopen(part))

    async def _reopen(self, part: _Part) -> None:
        delay = _RETRY_MIN_S
        while self.state is TransportState.OPEN and part.transport is None:
            await asyncio.sleep(delay)
            with contextlib.suppress(TransportError):
                await self._open(part)
                log.info("the %s transport is back", part.name)
                if self._announced is not None and part.transport is not None:
                    await part.transport.announce(self._announced)  # its members see us again now
                return
            delay = min(_RETRY_MAX_S, delay * 2)

    async def send(self, address: Address, frame: bytes) -> None:
        last: TransportError | None = None
        for index in self.order(address.device):
            transport = self.parts[index].transport
            if transport is None:
                continue
            try:
                await transport.send(address, frame)
                return
            except TransportError as exc:
                last = exc
        raise last or TransportError("no transport is up")

    async def announce(self, frame: bytes) -> None:
        self._announced = frame
        up = self._up()
        results = await asyncio.gather(*(t.announce(frame) for t in up), return_exceptions=True)
        if up and all(isinstance(r, TransportError) for r in results):
            raise TransportError("; ".join(str(r) for r in results))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, TransportError):
                raise result

    async def incoming(self) -> AsyncIterator[Incoming]:
        while True:
            item = await self._queue.get()
            if isinstance(item, TransportError):
                raise item
            yield item

    async def caught_up(self, timeout: float) -> bool:
        up = self._up()
        return bool(up) and all(await asyncio.gather(*(t.caught_up(timeout) for t in up)))

    async def aclose(self) -> None:
        if self.state is TransportState.CLOSED:
            return
        self.state = TransportState.CLOSED
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for part in self.parts:
            transport, part.transport = part.transport, None
            if transport is not None:
                with contextlib.suppress(TransportError):
                    await transport.aclose()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(TransportError("closed"))

    def abort(self) -> None:
        for transport in self._up():
            transport.abort()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
