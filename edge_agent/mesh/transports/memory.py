"""An in-memory mesh: every device of a test household in one event loop, no broker, no sockets.

Like python-tuf's RepositorySimulator or httpx's MockTransport: protocol, routing, failover and attack
tests run in milliseconds on exactly the code the agent runs, with the simulator standing in for the
broker. It behaves as the MQTT transport does where it matters (announcements are kept and replayed to
late joiners, a crash fires the departure notice, a clean close does not) and lets a test act as the
attacker the broker cannot stop: inject any frame anywhere, empty a presence board, watch every frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from edge_agent.errors import TransportError
from edge_agent.mesh.interfaces import (
    Address,
    Announcement,
    Channel,
    Connector,
    Incoming,
    Received,
    Transport,
    TransportState,
    Vanished,
)

_CLOSED = object()


@dataclass
class Wiretap:
    """What crossed the simulated broker: (address name, frame) in order."""

    frames: list[tuple[str, bytes]] = field(default_factory=list)

    def sizes(self, channel: Channel | None = None) -> list[int]:
        return [len(f) for a, f in self.frames if channel is None or f"/{channel.value}/" in a]


class MeshSimulator:
    """The broker of an in-memory household. Make one per test; connect devices with `connector`."""

    def __init__(self, household: str) -> None:
        self.household = household
        self.board: dict[str, bytes] = {}
        """Retained announcements by device (what a late joiner sees first)."""
        self.links: dict[str, MemoryTransport] = {}
        self.wiretap = Wiretap()
        self.drop: Callable[[str, bytes], bool] = lambda address, frame: False
        """Return True to lose a frame (a partition, or a lossy link)."""

    def connector(self, device: str) -> MemoryConnector:
        return MemoryConnector(self, device)

    # -- what devices do -------------------------------------------------------------------------------

    def _attach(self, link: MemoryTransport) -> None:
        old = self.links.get(link.device)
        if old is not None and old is not link:
            old._fail("another connection took over this device's session")  # as an MQTT takeover
        self.links[link.device] = link
        for device, frame in self.board.items():
            link._put(Announcement(device, frame, retained=True))

    def _detach(self, link: MemoryTransport, *, crashed: bool) -> None:
        if self.links.get(link.device) is link:
            del self.links[link.device]
            if crashed and link.departure_notice is not None:
                self.post_announcement(link.device, link.departure_notice)

    def deliver(self, address: Address, frame: bytes) -> None:
        self.wiretap.frames.append((str(address), frame))
        if self.drop(str(address), frame):
            return
        link = self.links.get(address.device)
        if link is not None and address.household == self.household:
            link._put(Received(address, frame))

    def post_announcement(self, device: str, frame: bytes) -> None:
        board = str(Address(self.household, device, Channel.PRESENCE))
        self.wiretap.frames.append((board, frame))
        self.board[device] = frame
        if self.drop(board, frame):
            return
        for link in list(self.links.values()):
            link._put(Announcement(device, frame))

    # -- what an attacker (or a test) does -------------------------------------------------------------

    def inject(self, address: Address, frame: bytes, *, retained: bool = False) -> None:
        """Put any bytes into an inbox, as any member with write access to it could."""
        link = self.links.get(address.device)
        if link is not None:
            link._put(Received(address, frame, retained))

    def empty_board(self, device: str) -> None:
        """Empty a device's presence board, as an unchecked MQTT client could (an unsigned 'gone')."""
        self.board.pop(device, None)
        for link in list(self.links.values()):
            link._put(Vanished(device))

    def sever(self, device: str) -> None:
        """Drop ``device``'s link without its departure notice reaching anyone (as when the broker
        itself restarts): the device reconnects, its peers never learn it was gone."""
        link = self.links.get(device)
        if link is not None:
            link.departure_notice = None
            link.abort()

    def crash(self, device: str) -> None:
        """Cut ``device`` off as a crash would: its departure notice fires."""
        link = self.links.get(device)
        if link is not None:
            link.abort()


class MemoryTransport(Transport):
    def __init__(self, sim: MeshSimulator, device: str, departure_notice: bytes | None) -> None:
        self.sim, self.device = sim, device
        self.departure_notice = departure_notice
        self.state = TransportState.UNOPENED
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._barriers: set[asyncio.Future[bool]] = set()

    async def open(self) -> None:
        if self.state is not TransportState.UNOPENED:
            raise TransportError(f"this transport is {self.state.value}; connect a new one")
        self.state = TransportState.OPEN
        self.sim._attach(self)

    async def aclose(self) -> None:
        if self.state is TransportState.OPEN:
            self.sim._detach(self, crashed=False)
        self._fail("closed")

    def abort(self) -> None:
        if self.state is TransportState.OPEN:
            self.sim._detach(self, crashed=True)
        self._fail("connection lost")

    def _fail(self, why: str) -> None:
        if self.state is not TransportState.CLOSED:
            self.state = TransportState.CLOSED
            self._queue.put_nowait((_CLOSED, why))
        for barrier in self._barriers:
            if not barrier.done():
                barrier.set_result(False)

    def _put(self, item: Incoming) -> None:
        if self.state is TransportState.OPEN:
            self._queue.put_nowait(item)

    def _live(self) -> None:
        if self.state is not TransportState.OPEN:
            raise TransportError(f"in-memory link of {self.device[:8]} is {self.state.value}")

    async def send(self, address: Address, frame: bytes) -> None:
        self._live()
        self.sim.deliver(address, frame)
        await asyncio.sleep(0)  # a real publish yields to the loop too

    async def announce(self, frame: bytes) -> None:
        self._live()
        self.sim.post_announcement(self.device, frame)
        await asyncio.sleep(0)

    async def caught_up(self, timeout: float) -> bool:
        self._live()
        barrier: asyncio.Future[bool] = asyncio.get_running_loop().create_future()  # behind all so far
        self._barriers.add(barrier)
        self._queue.put_nowait(barrier)
        try:
            async with asyncio.timeout(timeout):
                return await barrier
        except TimeoutError:
            return False
        finally:
            self._barriers.discard(barrier)

    async def incoming(self) -> AsyncIterator[Incoming]:
        while True:
            item = await self._queue.get()
            if isinstance(item, tuple) and item[0] is _CLOSED:
                raise TransportError(f"in-memory link of {self.device[:8]}: {item[1]}")
            if isinstance(item, asyncio.Future):  # a barrier: what came before it has been taken
                if not item.done():
                    item.set_result(True)
                continue
            assert isinstance(item, Received | Announcement | Vanished)
            yield item


class MemoryConnector(Connector):
    def __init__(self, sim: MeshSimulator, device: str) -> None:
        self.sim, self.device = sim, device
        self.current: MemoryTransport | None = None

    def connect(self, departure_notice: bytes | None) -> MemoryTransport:
        self.current = MemoryTransport(self.sim, self.device, departure_notice)
        return self.current
