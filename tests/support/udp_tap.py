"""A UDP relay on loopback that records what passes: the attacker on the LAN of the CoAP attack tests.

Datagrams from a client to the tap's port go to the target from a socket of the tap's (one per client),
and the target's answers go back to that client; both directions are kept in ``seen``. `inject` sends
any datagram to the target from a fresh socket (a replay from elsewhere on the LAN) and returns what
comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiocoap import Message

Addr = tuple[str, int]


@dataclass
class Seen:
    upstream: bool
    """From the client to the target (else the target's answer)."""
    data: bytes

    def message(self) -> Message:
        return Message.decode(self.data)


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.queue.put_nowait(data)


@dataclass
class UdpTap:
    target: Addr
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _upstreams: dict[Addr, asyncio.DatagramTransport] = field(default_factory=dict)
    _making: dict[Addr, asyncio.Future[asyncio.DatagramTransport]] = field(default_factory=dict)
    _front: asyncio.DatagramTransport | None = None

    async def _upstream(self, client: Addr) -> asyncio.DatagramTransport:
        """The tap's socket towards the target for ``client``: made once (datagrams that arrive while
        it is being made wait for that one), so every datagram of a client leaves from one port, in
        order."""
        making = self._making.get(client)
        if making is None:
            making = self._making[client] = asyncio.ensure_future(self._connect(client))
        return await asyncio.shield(making)

    async def _connect(self, client: Addr) -> asyncio.DatagramTransport:
        tap = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Addr) -> None:
                tap.seen.append(Seen(False, data))
                if tap._front is not None:
                    tap._front.sendto(data, client)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Back, local_addr=("127.0.0.1", 0), remote_addr=self.target
        )
        self._upstreams[client] = transport
        return transport

    async def inject(self, data: bytes, timeout: float = 2.0) -> Message | None:
        """Send ``data`` to the target from a new socket; its first answer (None if none came)."""
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            _Collect, local_addr=("127.0.0.1", 0), remote_addr=self.target
        )
        try:
            transport.sendto(data)
            try:
                async with asyncio.timeout(timeout):
                    return Message.decode(await protocol.queue.get())
            except TimeoutError:
                return None
        finally:
            transport.close()


@contextlib.asynccontextmanager
async def tapped(target: Addr) -> AsyncIterator[UdpTap]:
    tap = UdpTap(target)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    class Front(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Addr) -> None:
            tap.seen.append(Seen(True, data))
            upstream = tap._upstreams.get(addr)
            if upstream is not None:  # in order, at once
                upstream.sendto(data)
                return

            async def forward() -> None:
                (await tap._upstream(addr)).sendto(data)

            task = asyncio.ensure_future(forward())
            pending.add(task)
            task.add_done_callback(pending.discard)

    front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
    tap._front = front
    tap.port = int(front.get_extra_info("sockname")[1])
    try:
        yield tap
    finally:
        front.close()
        for transport in tap._upstreams.values():
            transport.close()
        for task in pending:
            task.cancel()
        for making in tap._making.values():
            making.cancel()
        await asyncio.gather(*pending, *tap._making.values(), return_exceptions=True)
