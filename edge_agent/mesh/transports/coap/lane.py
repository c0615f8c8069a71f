"""`MessageLane`: OSCORE-protected CoAP exchanges between members, on the CoAP endpoint's own socket.

Every mesh message between two members with a session (requests, stream chunks, pings, model-update
chunks) is one ``POST /hearth/m/<channel>`` under OSCORE (`protection`). aiocoap carried them at first;
measured, its request machinery (a pipe, a task and a deepcopy per message, NSTART = 1, one block per
round trip) made a 200-byte round trip 3.5 times one through Mosquitto's and a 64 KB one 340 times.
The lane keeps CoAP on the wire and does only what these exchanges need:

- **one socket, one port**: it sits in front of aiocoap's UDP endpoint and takes the datagrams that are
  its own (requests carrying an OSCORE option, answers to its tokens); the rest (presence, hellos,
  handshake frames, discovery) reach aiocoap as before;
- **confirmable requests, piggybacked answers** (RFC 7252 §4): retransmission tuned for a home LAN
  (`_ACK_TIMEOUT`), deduplication of retransmitted requests by (address, message id), bounded;
- **long messages block-wise** (Block1, RFC 7959) with a Request-Tag (RFC 9175) inside OSCORE, several
  blocks in flight (as RFC 9177's Q-Block1 bursts, up to `_WINDOW`), the last one among them: the
  receiver assembles by offset and answers the last block once every block is in; a block is as
  large as the path carries unfragmented: 1024 bytes on a 1500-byte LAN, multiples of 1024 (BERT's
  SZX 7, RFC 8323 §6) where the route's MTU is larger (loopback);
- **answers within the server's rules**: an answer opens only under the context that protected the
  request (RFC 8613 §8.4); an error to a message that did not open goes back unprotected (4.01
  *Security context not found*, 4.01 *Replay detected*, 4.00 *Decryption failed*), any other answer
  protected.

This module is the socket and the asking side; `lane_serving` answers. Everything a peer can make the
lane hold is bounded: exchanges are its own, deduplication entries, assemblies and running handlers
are bounded there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.mesh.transports.coap import wire
from edge_agent.mesh.transports.coap.lane_serving import (
    MAX_ASSEMBLIES,
    Handler,
    LaneServer,
    Refused,
    Sockaddr,
)
from edge_agent.mesh.transports.coap.protection import OscoreContext, ProtectionError, RequestId
from edge_agent.mesh.transports.coap.wire import ACK, CON, NON, RST, Code, Datagram, WireError

__all__ = ["Handler", "LaneRefused", "MessageLane", "Refused", "Sockaddr", "Traffic", "path_budget"]

log = logging.getLogger(__name__)


_ACK_TIMEOUT = 0.5
_ACK_RANDOM = 1.5
_MAX_RETRANSMIT = 4
"""RFC 7252 §4.8's transmission parameters, with the first retry after ~0.5 s (not 2-3 s): a lost
datagram must be resent well within the mesh's stall timeout."""
_WINDOW = 8
_WINDOW_BYTES = 128 * 1024
"""Blocks of one long message in flight at once: at most 8 (RFC 9177's MAX_PAYLOADS is 10), and at most
128 KiB of them (two of loopback's largest blocks; Linux's default receive buffer, 208 KiB, holds them)."""
_OVERHEAD = 64
"""Bytes a datagram needs besides a block: CoAP header, token, OSCORE option, inner options, tag."""
_DATAGRAM_MAX = 65507
"""The largest UDP payload (IPv4)."""
_RECEIVE_BUFFER = 1 << 20
_INDEFINITE_RESPONSES = frozenset({ACK, CON, NON})


class LaneRefused(Exception):
    """The peer answered an exchange with something other than success."""

    def __init__(self, code: int, diagnostic: str, *, protected: bool) -> None:
        super().__init__(f"{Code.text(code)} {diagnostic}".strip())
        self.code = code
        self.diagnostic = diagnostic
        self.protected = protected
        """Whether the refusal came under the session's keys (False: an OSCORE error, the context is
        unknown or the message did not open there)."""


@dataclass(slots=True)
class Traffic:
    """The lane's datagrams and their bytes (UDP payloads), each way."""

    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    received_bytes: int = 0


@dataclass(slots=True)
class _Exchange:
    data: bytes
    address: Sockaddr
    mid: int
    future: asyncio.Future[Datagram]
    interval: float
    sent: int = 1
    timer: asyncio.TimerHandle | None = None


def path_budget(host: str) -> int:
    """Bytes of a message one datagram to ``host`` carries without IP fragmentation: the route's MTU
    (Linux tells it for a connected UDP socket) less the headers; 1280 (IPv6's minimum) elsewhere."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    family, level, option, headers = (
        (socket.AF_INET, socket.IPPROTO_IP, getattr(socket, "IP_MTU", 14), 28)
        if ip.version == 4
        else (socket.AF_INET6, socket.IPPROTO_IPV6, getattr(socket, "IPV6_MTU", 24), 48)
    )
    mtu = 1280
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        mtu = probe.getsockopt(level, option)
    return min(mtu - headers, _DATAGRAM_MAX) - _OVERHEAD


class MessageLane:
    """The OSCORE exchanges of one CoAP endpoint (see the module docstring)."""

    def __init__(
        self,
        *,
        keys: Callable[[bytes], OscoreContext],
        handle: Handler,
        max_body: int,
        refused: Callable[[ProtectionError | Refused], None] = lambda refusal: None,
        settle: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._sock: socket.socket | None = None
        self._exchanges: dict[bytes, _Exchange] = {}
        self._by_mid: dict[int, bytes] = {}
        self._token_prefix = secrets.token_bytes(4)
        self._counter = 0
        self._mid = secrets.randbelow(1 << 16)
        self.server = LaneServer(
            keys=keys,
            handle=handle,
            max_body=max_body,
            refused=refused,
            sendto=self._send,
            next_mid=self._next_mid,
            settle=settle,
        )
        self._budgets: dict[str, int] = {}
        self.traffic = Traffic()
        self._long: dict[Sockaddr, tuple[asyncio.Semaphore, list[int]]] = {}
        """Per address with long messages on their way to it: the slots left, and how many hold or
        wait for one (its peer assembles at most `MAX_ASSEMBLIES` per session)."""

    # -- the socket -----------------------------------------------------------------------------------

    def attach(self, interface: Any) -> None:
        """Sit in front of aiocoap's UDP interface (``MessageInterfaceUDP6``): its socket is the lane's
        too, every datagram is offered to the lane first."""
        transport = interface.transport
        sock = transport.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _RECEIVE_BUFFER)
        transport.max_size = _DATAGRAM_MAX + 1  # aiocoap reads 4096 bytes: a block may be larger
        received = interface.datagram_msg_received

        def datagram_msg_received(data: bytes, ancdata: Any, flags: int, address: Sockaddr) -> None:
            if flags & socket.MSG_TRUNC:
                return  # longer than any datagram a member sends
            if not self.take(data, address):
                received(data, ancdata, flags, address)

        interface.datagram_msg_received = datagram_msg_received
        self._sock = sock

    def detach(self) -> None:
        """The endpoint closed: every exchange under way fails, nothing more is taken."""
        self._sock = None
        for exchange in list(self._exchanges.values()):
            if not exchange.future.done():
                exchange.future.set_exception(ConnectionError("the CoAP endpoint closed"))
        self.server.clear()

    def _send(self, data: bytes, address: Sockaddr) -> None:
        sock = self._sock
        if sock is None:
            return
        self.traffic.sent += 1
        self.traffic.sent_bytes += len(data)
        try:
            sock.sendto(data, address)
        except OSError as exc:  # a full queue, a local firewall: a lost datagram, resent if it matters
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EPERM, errno.ENOMEM):
                log.debug("a CoAP datagram to %s was not sent: %s", address[:2], exc)

    def take(self, data: bytes, address: Sockaddr) -> bool:
        """Whether ``data`` is the lane's (then it is handled); False: aiocoap's."""
        try:
            message = wire.decode(data)
        except WireError:
            return False
        taken = self._take(message, data, address)
        if taken:
            self.traffic.received += 1
            self.traffic.received_bytes += len(data)
        return taken

    def _take(self, message: Datagram, data: bytes, address: Sockaddr) -> bool:
        if message.is_request:
            option = wire.first(message.options, wire.OSCORE)
            if option is None:
                return False
            self.server.serve(message, option, data, address)
            return True
        exchange = self._exchanges.get(message.token) if message.code else None
        if exchange is None and message.mtype in (ACK, RST) and not message.code:
            token = self._by_mid.get(message.mid)
            exchange = self._exchanges.get(token) if token is not None else None
            if exchange is None or exchange.mid != message.mid or exchange.address != address:
                return False
            if message.mtype == RST:
                if not exchange.future.done():
                    exchange.future.set_exception(LaneRefused(0, "reset by the peer", protected=False))
            elif exchange.timer is not None:  # an empty ACK: the answer comes separately
                exchange.timer.cancel()
                exchange.timer = None
            return True
        if exchange is None or message.mtype not in _INDEFINITE_RESPONSES or exchange.address != address:
            return False
        if message.mtype == CON:
            self._send(wire.encode(Datagram(ACK, Code.EMPTY, message.mid)), address)
        if not exchange.future.done():
            exchange.future.set_result(message)
        return True

    # -- asking ---------------------------------------------------------------------------------------

    def budget(self, host: str) -> int:
        """The largest body one datagram to ``host`` carries (`path_budget`, remembered)."""
        found = self._budgets.get(host)
        if found is None:
            if len(self._budgets) > 1024:
                self._budgets.clear()
            found = self._budgets[host] = path_budget(host)
        return found

    async def post(
        self,
        address: Sockaddr,
        context: OscoreContext,
        path: tuple[bytes, ...],
        body: bytes,
        *,
        budget: int,
        timeout: float,
    ) -> bytes:
        """POST ``body`` to ``path`` at ``address`` under ``context``; the 2.04 answer's payload.

        Raises LaneRefused (any other answer), TimeoutError (nothing within ``timeout``, counted from
        the first datagram), ConnectionError (the endpoint closed)."""
        if self._sock is None:
            raise ConnectionError("the CoAP endpoint is not open")
        deadline = asyncio.get_running_loop().time() + timeout
        options = [(wire.URI_PATH, part) for part in path]
        if len(body) <= budget:
            code, _, payload = await self._ask(address, context, options, body, deadline)
        else:
            async with self._long_slot(address):
                deadline = asyncio.get_running_loop().time() + timeout  # from its first block
                code, payload = await self._post_blocks(address, context, options, body, budget, deadline)
        if code != Code.CHANGED:
            raise LaneRefused(code, payload.decode(errors="replace"), protected=True)
        return payload

    @contextlib.asynccontextmanager
    async def _long_slot(self, address: Sockaddr) -> AsyncIterator[None]:
        """One of the `MAX_ASSEMBLIES` long messages that may be on their way to ``address`` at once."""
        slots, users = self._long.setdefault(address, (asyncio.Semaphore(MAX_ASSEMBLIES), [0]))
        users[0] += 1
        try:
            async with slots:
                yield
        finally:
            users[0] -= 1
            if not users[0]:  # nothing long on its way there: forget its slots
                del self._long[address]

    async def _post_blocks(
        self,
        address: Sockaddr,
        context: OscoreContext,
        options: list[tuple[int, bytes]],
        body: bytes,
        budget: int,
        deadline: float,
    ) -> tuple[int, bytes]:
        size, szx = (budget // 1024 * 1024, 7) if budget >= 2048 else (1024, 6)
        unit = 1024 if szx == 7 else 16 << szx
        tag = [(wire.REQUEST_TAG, secrets.token_bytes(4))]
        starts = range(0, len(body), size)
        window = asyncio.Semaphore(max(1, min(_WINDOW, _WINDOW_BYTES // size)))

        async def block(start: int, more: bool) -> tuple[int, bytes]:
            marker = [(wire.BLOCK1, wire.block_value(start // unit, more, szx))]
            async with window:
                code, _, payload = await self._ask(
                    address, context, options + marker + tag, body[start : start + size], deadline
                )
            if more and code != Code.CONTINUE:
                raise LaneRefused(code, payload.decode(errors="replace"), protected=True)
            return code, payload

        async with asyncio.TaskGroup() as group:  # the last block too: the peer answers it when all are in
            for start in starts[:-1]:
                group.create_task(block(start, True))
            last = group.create_task(block(starts[-1], False))
        return last.result()

    async def _ask(
        self,
        address: Sockaddr,
        context: OscoreContext,
        options: list[tuple[int, bytes]],
        payload: bytes,
        deadline: float,
    ) -> tuple[int, list[tuple[int, bytes]], bytes]:
        option, ciphertext, request = context.protect_request(wire.plaintext(Code.POST, options, payload))
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        token = self._token_prefix + self._counter.to_bytes(4, "big")
        mid = self._next_mid()
        data = wire.encode(Datagram(CON, Code.POST, mid, token, [(wire.OSCORE, option)], ciphertext))
        loop = asyncio.get_running_loop()
        exchange = _Exchange(
            data, address, mid, loop.create_future(), _ACK_TIMEOUT * random.uniform(1.0, _ACK_RANDOM)
        )
        self._exchanges[token] = exchange
        self._by_mid[mid] = token
        exchange.timer = loop.call_later(exchange.interval, self._resend, token)
        try:
            self._send(data, address)
            async with asyncio.timeout_at(deadline):
                answer = await exchange.future
        finally:
            if exchange.timer is not None:
                exchange.timer.cancel()
            self._exchanges.pop(token, None)
            if self._by_mid.get(mid) == token:
                del self._by_mid[mid]
        return self._opened(context, request, answer)

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _resend(self, token: bytes) -> None:
        exchange = self._exchanges.get(token)
        if exchange is None or exchange.future.done():
            return
        if exchange.sent > _MAX_RETRANSMIT:
            exchange.timer = None  # the caller's deadline ends it
            return
        exchange.sent += 1
        exchange.interval *= 2
        self._send(exchange.data, exchange.address)
        exchange.timer = asyncio.get_running_loop().call_later(exchange.interval, self._resend, token)

    @staticmethod
    def _opened(
        context: OscoreContext, request: RequestId, answer: Datagram
    ) -> tuple[int, list[tuple[int, bytes]], bytes]:
        option = wire.first(answer.options, wire.OSCORE)
        if option is None:  # an OSCORE error (RFC 8613 §8.2): not under the keys
            raise LaneRefused(answer.code, answer.payload.decode(errors="replace"), protected=False)
        try:
            return wire.split_plaintext(context.unprotect_response(request, option, answer.payload))
        except WireError:
            raise LaneRefused(Code.BAD_REQUEST, "an answer that does not parse", protected=True) from None

    # -- serving --------------------------------------------------------------------------------------
