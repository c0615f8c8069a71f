"""The serving half of the message lane (`lane`): requests that carry an OSCORE option, answered.

Order matters and is RFC 8613 §8.2's: a retransmitted request gets its earlier answer again (by address
and message id, before anything is opened); then the key id finds a context (unknown: 4.01, unprotected),
the partial IV passes the replay window, the ciphertext opens (else 4.00, unprotected); only then are
the inner options read, blocks assembled and the handler called, and every answer from there on goes
back protected. Blocks of one long message may arrive in any order (the sender has several in
flight); the last block's answer waits until every block is in.

Everything a peer can make this hold is bounded: answers kept for retransmissions (count and age), long
messages under assembly (per context, bytes up to ``max_body``, idle time), handlers running at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from edge_agent.mesh.transports.coap import wire
from edge_agent.mesh.transports.coap.protection import (
    OscoreContext,
    ProtectionError,
    RequestId,
    parse_option,
)
from edge_agent.mesh.transports.coap.wire import ACK, CON, NON, Code, Datagram, WireError

__all__ = ["MAX_ASSEMBLIES", "Handler", "LaneServer", "Refused", "Sockaddr"]

log = logging.getLogger(__name__)

Sockaddr = tuple[Any, ...]
"""An address of the endpoint's (IPv6, v4-mapped) socket."""

_RETRANSMIT_SPAN = 0.5 * (2**4 - 1) * 1.5
"""MAX_TRANSMIT_SPAN of the lane's transmission parameters (`lane`): retransmissions come within it."""
_DEDUP_S = _RETRANSMIT_SPAN + 5.0
"""How long an answer is kept for a retransmitted request: MAX_TRANSMIT_SPAN and a margin."""
_DEDUP_MAX = 16384
"""At most this many remembered answers (~30 bytes each for a block's 2.31): enough for a retransmission
to find its answer at 10,000 datagrams a second; past it the oldest go, and a late retransmission is
refused as a replay, which the sender takes as a lost message, not a lost session."""
MAX_ASSEMBLIES = 8
"""Long messages one context may have under assembly at once."""
_ASSEMBLY_S = 30.0
"""A long message with no block for this long is dropped."""
_IDLE_S = 2.0
"""A long message with no block for this long gives way to a new one from its session when that session
has `MAX_ASSEMBLIES` under way (its sender gave it up: a live one has blocks in flight)."""
_UNKNOWN = "Security context not found"
_MAX_HANDLING = 256
"""Complete messages whose handler is still running; past it, 5.03."""


class Refused(Exception):
    """The serving side's refusal of a message that opened: answered protected with ``code``."""

    def __init__(self, code: int, diagnostic: str) -> None:
        super().__init__(f"{Code.text(code)} {diagnostic}")
        self.code = code
        self.diagnostic = diagnostic


Handler = Callable[[OscoreContext, tuple[bytes, ...], bytes], "bytes | Awaitable[bytes]"]
"""What a complete, opened message is handed to: (its context, its Uri-Path, its body) -> the answer's
payload, now or later; raises `Refused`."""


@dataclass(slots=True)
class _Seen:
    """A request this lane answered (or is answering), kept for its retransmissions."""

    fingerprint: int
    at: float
    answer: bytes | None = None


@dataclass(slots=True)
class _Assembly:
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    at: float = 0.0
    total: int | None = None
    final: _Asked | None = None
    """The last block's request, answered once every block is in (it may arrive before others)."""


@dataclass(frozen=True, slots=True)
class _Asked:
    """A request being answered: the datagram, where it came from, what its answer is bound to."""

    message: Datagram
    address: Sockaddr
    request: RequestId


class LaneServer:
    """The lane's answers to members' requests (see the module docstring)."""

    def __init__(
        self,
        *,
        keys: Callable[[bytes], OscoreContext],
        handle: Handler,
        max_body: int,
        refused: Callable[[ProtectionError | Refused], None],
        sendto: Callable[[bytes, Sockaddr], None],
        next_mid: Callable[[], int],
        settle: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.keys = keys
        """A request's key id -> its context; raises ProtectionError (4.01 *Security context not found*)."""
        self.handle = handle
        self.max_body = max_body
        self.refused = refused
        self._sendto = sendto
        self._next_mid = next_mid
        self.settle = settle
        """Waits until the handshake frames received so far are read: a request under a key id not
        known yet is judged again after it (the handshake's last message and the first request under
        its keys travel different ways, and the request may come first)."""
        self._seen: OrderedDict[tuple[Sockaddr, int], _Seen] = OrderedDict()
        self._assemblies: dict[tuple[int, bytes], _Assembly] = {}
        self._handling: set[asyncio.Task[None]] = set()

    def clear(self) -> None:
        """The endpoint closed: handlers cancelled, nothing kept."""
        for task in list(self._handling):
            task.cancel()
        self._assemblies.clear()
        self._seen.clear()

    def serve(self, message: Datagram, option: bytes, data: bytes, address: Sockaddr) -> None:
        """One request with an OSCORE option, from ``address``: answered now or by its handler."""
        now = time.monotonic()
        key = (address, message.mid)
        if message.mtype == CON:
            seen = self._seen.get(key)
            if seen is not None and seen.fingerprint == hash(data) and now - seen.at < _DEDUP_S:
                if seen.answer is not None:  # a retransmission: the same answer again
                    self._sendto(seen.answer, address)
                return
            self._remember(key, _Seen(hash(data), now), now)
        self._open(message, option, address, now, settled=self.settle is None)

    def _open(
        self, message: Datagram, option: bytes, address: Sockaddr, now: float, *, settled: bool
    ) -> None:
        try:
            piv, kid = parse_option(option)
            if kid is None:
                raise ProtectionError(Code.BAD_REQUEST, "Decryption failed")
            context = self.keys(kid)
            plaintext, request = context.unprotect_request(piv, message.payload)
        except ProtectionError as exc:
            if not settled and exc.diagnostic == _UNKNOWN and len(self._handling) < _MAX_HANDLING:
                self._spawn(self._after_settling(message, option, address))
                return
            self.refused(exc)
            self._answer(message, address, exc.code, exc.diagnostic.encode())
            return
        asked = _Asked(message, address, request)
        try:
            code, options, payload = wire.split_plaintext(plaintext)
            if code != Code.POST:
                raise Refused(Code.BAD_REQUEST, "only POST")
            block = wire.first(options, wire.BLOCK1)
            if block is None:
                if len(payload) > self.max_body:
                    raise Refused(Code.TOO_LARGE, f"a message is at most {self.max_body} bytes")
                whole: tuple[_Asked, bytes] | None = (asked, payload)
            else:
                whole = self._block(context, block, options, payload, asked, now)
                if wire.block_of(block)[1]:  # a block before the last: 2.31, whatever else it completed
                    self._seal(asked, context, Code.CONTINUE, [(wire.BLOCK1, block)])
        except (WireError, Refused) as exc:
            refusal = exc if isinstance(exc, Refused) else Refused(Code.BAD_REQUEST, "bad message")
            self.refused(refusal)
            self._seal(asked, context, refusal.code, [], refusal.diagnostic.encode())
            return
        if whole is not None:
            path = tuple(value for number, value in options if number == wire.URI_PATH)
            self._complete(whole[0], context, path, whole[1])

    def _complete(self, asked: _Asked, context: OscoreContext, path: tuple[bytes, ...], body: bytes) -> None:
        """A whole message: to the handler, its answer to ``asked`` (the request, or its last block)."""
        try:
            if len(self._handling) >= _MAX_HANDLING:
                raise Refused(Code.UNAVAILABLE, "busy")
            answer = self.handle(context, path, body)
        except Refused as exc:
            self.refused(exc)
            self._seal(asked, context, exc.code, [], exc.diagnostic.encode())
            return
        except Exception:  # a bug here, not the peer's doing: answered, logged, the lane goes on
            log.exception("the handler of a CoAP message failed")
            self._seal(asked, context, Code.INTERNAL, [], b"internal error")
            return
        if isinstance(answer, bytes):
            self._seal(asked, context, Code.CHANGED, [], answer)
        else:
            self._spawn(self._later(asked, context, answer))

    async def _after_settling(self, message: Datagram, option: bytes, address: Sockaddr) -> None:
        assert self.settle is not None
        await self.settle()
        self._open(message, option, address, time.monotonic(), settled=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _later(self, asked: _Asked, context: OscoreContext, answer: Awaitable[bytes]) -> None:
        try:
            payload = await answer
        except Refused as exc:
            self._seal(asked, context, exc.code, [], exc.diagnostic.encode())
        except Exception:
            log.exception("the handler of a CoAP message failed")
            self._seal(asked, context, Code.INTERNAL, [], b"internal error")
        else:
            self._seal(asked, context, Code.CHANGED, [], payload)

    def _block(
        self,
        context: OscoreContext,
        block: bytes,
        options: list[tuple[int, bytes]],
        payload: bytes,
        asked: _Asked,
        now: float,
    ) -> tuple[_Asked, bytes] | None:
        """Take one block; once every block is in, the last block's request and the whole body (None:
        more to come). Blocks arrive in any order; raises Refused."""
        num, more, szx = wire.block_of(block)
        unit = 1024 if szx == 7 else 16 << szx
        start = num * unit
        key = (id(context), wire.first(options, wire.REQUEST_TAG) or b"")
        if start + len(payload) > self.max_body:
            self._assemblies.pop(key, None)
            raise Refused(Code.TOO_LARGE, f"a message is at most {self.max_body} bytes")
        if more and (not payload or len(payload) % unit or (szx < 7 and len(payload) != unit)):
            raise Refused(Code.BAD_REQUEST, "a block of the wrong size")
        assembly = self._assemblies.get(key)
        if assembly is None:
            self._prune(now)
            mine = [(a.at, k) for k, a in self._assemblies.items() if k[0] == key[0]]
            if len(mine) >= MAX_ASSEMBLIES:
                at, oldest = min(mine)
                if now - at < _IDLE_S:
                    raise Refused(Code.UNAVAILABLE, f"at most {MAX_ASSEMBLIES} long messages at once")
                del self._assemblies[oldest]
            assembly = self._assemblies[key] = _Assembly()
        assembly.at = now
        if not more:
            assembly.total, assembly.final = start + len(payload), asked
        if start not in assembly.parts:
            assembly.parts[start] = payload
            assembly.size += len(payload)
        if assembly.total is None or assembly.final is None or assembly.size < assembly.total:
            return None
        del self._assemblies[key]
        body = b"".join(assembly.parts[at] for at in sorted(assembly.parts))
        offsets = itertools.accumulate((len(assembly.parts[at]) for at in sorted(assembly.parts)), initial=0)
        if len(body) != assembly.total or list(offsets)[:-1] != sorted(assembly.parts):
            raise Refused(Code.INCOMPLETE, "blocks overlap or are missing")
        return assembly.final, body

    def _prune(self, now: float) -> None:
        stale = [k for k, a in self._assemblies.items() if now - a.at > _ASSEMBLY_S]
        for k in stale:
            del self._assemblies[k]

    def _remember(self, key: tuple[Sockaddr, int], seen: _Seen, now: float) -> None:
        self._seen[key] = seen
        self._seen.move_to_end(key)
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if len(self._seen) <= _DEDUP_MAX and now - oldest.at < _DEDUP_S:
                break
            self._seen.popitem(last=False)

    def _seal(
        self,
        asked: _Asked,
        context: OscoreContext,
        code: int,
        options: list[tuple[int, bytes]],
        payload: bytes = b"",
    ) -> None:
        option, ciphertext = context.protect_response(asked.request, wire.plaintext(code, options, payload))
        self._answer(asked.message, asked.address, Code.CHANGED, ciphertext, [(wire.OSCORE, option)])

    def _answer(
        self,
        message: Datagram,
        address: Sockaddr,
        code: int,
        payload: bytes,
        options: list[tuple[int, bytes]] | None = None,
    ) -> None:
        if message.mtype == CON:
            mtype, mid = ACK, message.mid
        else:
            mtype, mid = NON, self._next_mid()
        data = wire.encode(Datagram(mtype, code, mid, message.token, options or [], payload))
        seen = self._seen.get((address, message.mid)) if message.mtype == CON else None
        if seen is not None:
            seen.answer = data
        self._sendto(data, address)
