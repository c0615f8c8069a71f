"""The mesh endpoint: one connection loop, dispatch of verified messages, and request/stream RPC.

One reader task owns the connection (a fresh transport from the `Connector` per link) and dispatches
each verified message; it reconnects with backoff when the link drops. Features (the shared translation
memory, group-key rotation, later model updates) register handlers for their own message types. A
requester's stream fails fast (PeerLostError) when its peer departs (signed notice), ages out, stalls,
is revoked, or our link drops (LinkDownError), so the router can fail over. Knows nothing about
engines: a handler turns a Request into Chunks. The rules themselves (who may ask, ordering, merging)
live IO-free in rpc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ValidationError

from edge_agent.errors import (
    BudgetExceededError,
    HearthError,
    InvalidRequestError,
    LinkDownError,
    NoLocalModelError,
    PeerError,
    PeerLostError,
    PeerRefusedError,
    RecipientNotMemberError,
    StreamBrokenError,
    TransportError,
)
from edge_agent.mesh.envelope import KIND_DIRECT, KIND_GROUP, Opened
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel, Connector
from edge_agent.mesh.node import Announced, MeshNode, VanishHint
from edge_agent.mesh.peers import Peer, PeerTable
from edge_agent.mesh.protocol import (
    Accepted,
    Cancel,
    Chunk,
    Departure,
    Failure,
    FailureCode,
    Ping,
    Pong,
    Presence,
    Request,
    decode,
    encode,
)
from edge_agent.mesh.rpc import StreamReassembler, admit, keepalive_every_s, merge_chunks
from edge_agent.mesh.settings import MeshSettings
from edge_agent.supervision import Supervisor
from edge_agent.tasks import Task

log = logging.getLogger(__name__)

__all__ = ["EndpointState", "Handler", "MeshEndpoint"]

Handler = Callable[[Request, DeviceCertificate], AsyncGenerator[Chunk, None]]
"""Serves one request: yields chunks (id/seq are filled in by the endpoint), the last one final."""
M = TypeVar("M", bound=BaseModel)
FeatureHandler = Callable[[DeviceCertificate, Any], None]

_SAFE_MESSAGES: set[FailureCode] = {"invalid", "not-served", "busy", "deadline", "forbidden"}


class EndpointState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class _Stream:
    peer: str
    reassembler: StreamReassembler
    queue: asyncio.Queue[Chunk | Accepted | Failure | PeerLostError] = field(default_factory=asyncio.Queue)
    broken: bool = False

    def fail(self, error: PeerLostError) -> None:
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


async def _stop(tasks: list[asyncio.Task[Any]], patience_s: float = 15.0) -> None:
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


def _failure(exc: BaseException) -> tuple[FailureCode, str]:
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


class MeshEndpoint:
    def __init__(
        self,
        node: MeshNode,
        connector: Connector,
        *,
        presence: Callable[[], Presence] | None,
        handler: Handler | None = None,
        settings: MeshSettings | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.node = node
        self.supervisor = supervisor or Supervisor()
        """Restarts this endpoint's loops and drops what makes them fail (shared with the agent's
        other loops when the agent passes its own: one health view)."""
        self.connector = connector
        self.settings = settings or MeshSettings()
        self.limits = self.settings.limits
        self._presence = presence
        self.handler = handler
        self.state = EndpointState.UNOPENED
        self.peers = PeerTable(
            node.device_id,
            max_peers=self.limits.max_peers,
            max_interval_s=self.limits.max_presence_interval_s,
        )
        self.connected = asyncio.Event()
        self.peers_changed = asyncio.Event()
        self.link_changed = asyncio.Event()
        """Set when the broker connection comes up or goes down (watchers of reachability: not the
        router, which waits for peers themselves to come back)."""
        self.link = 0
        """Connection number within this session (see protocol.Departure)."""
        self._features: dict[type[BaseModel], FeatureHandler] = {}
        self.presence_hooks: list[Callable[[Opened], None]] = []
        """Called with every verified, fresh advert (features watch epochs, sessions, ...)."""
        self._streams: dict[str, _Stream] = {}
        self._serving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._serving_by: Counter[str] = Counter()
        self.served = 0
        """Requests answered in full for peers since this endpoint opened (announced in presence)."""
        self._pings: dict[int, tuple[str, float, asyncio.Future[float]]] = {}
        self._checking: set[str] = set()
        self._deferred_cancels: deque[tuple[str, str, str]] = deque(maxlen=self.limits.max_pending_pings)
        """(peer, request id, peer session) of streams abandoned while our link was down."""
        self._tasks: list[asyncio.Task[Any]] = []
        self.own_presence_seen = False
        self.ignored: Counter[str] = Counter()
        """Harmless frames set aside (an earlier connection's will, fired late by a session takeover)."""
        node.membership.on_revoked.append(self._purge_revoked)

    @property
    def device_id(self) -> str:
        return self.node.device_id

    @property
    def queue_depth(self) -> int:
        return len(self._serving)

    @property
    def streams_open(self) -> int:
        """Answers we are waiting for from peers (our own offloaded requests)."""
        return len(self._streams)

    def streaming_from(self) -> list[str]:
        """The devices whose answers we are waiting for now (diagnostics, tests)."""
        return [stream.peer for stream in self._streams.values()]

    @property
    def dropped(self) -> Counter[str]:
        return self.node.dropped

    # -- the router's view (mesh.interfaces.PeerDirectory) --------------------------------------------

    def known(self) -> list[Peer]:
        return self.peers.all()

    def is_member(self, device_id: str) -> bool:
        try:
            self.node.membership.member(device_id)
        except HearthError:
            return False
        return True

    def own_requests(self) -> list[Task]:
        own = self.node.membership.certs.get(self.device_id)
        return list(own.requests) if own is not None else []

    def ban(self, device_id: str, seconds: float) -> None:
        self.peers.ban(device_id, seconds)

    def succeeded(self, device_id: str, units: int = 0, seconds: float = 0.0) -> None:
        self.peers.succeeded(device_id, units, seconds)

    def register(self, message_type: type[M], handler: Callable[[DeviceCertificate, M], None]) -> None:
        """Route verified direct messages of ``message_type`` to a feature (memory, rekeying, ...)."""
        self._features[message_type] = handler

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not EndpointState.UNOPENED:
            raise RuntimeError(f"this endpoint is {self.state.value}; make a new one")
        self.state = EndpointState.OPEN
        for name, loop in (
            ("mesh-connection", self._connection_loop),
            ("mesh-housekeeping", self._housekeeping_loop),
        ):
            supervised = self.supervisor.supervise(name, loop, stopping=lambda: self._closing)
            self._tasks.append(asyncio.create_task(supervised, name=name))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, clean: bool = True) -> None:
        """Stop serving; with ``clean`` also replace our advert with a signed departure notice so
        peers see us leave now."""
        if self.state is EndpointState.CLOSED:
            return
        self.state = EndpointState.CLOSED
        for task in list(self._serving.values()):
            task.cancel()
        if clean and self.connected.is_set() and self._presence is not None:
            with contextlib.suppress(TransportError):
                await self.node.announce(self._departure())
        await _stop(list(self._tasks) + list(self._serving.values()))
        self._tasks.clear()
        transport, self.node.transport = self.node.transport, None
        if transport is not None:
            with contextlib.suppress(TransportError):
                await transport.aclose()
        self.node.save_state()

    @property
    def _closing(self) -> bool:
        return self.state is EndpointState.CLOSED

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise TransportError(f"no connection to the mesh within {timeout:g} s") from None

    async def caught_up(self, timeout: float) -> bool:
        """True once what the broker held for us when we connected (the presence board's adverts,
        this device's own included) has been taken in here; False after ``timeout`` (or no link)."""
        end = time.monotonic() + timeout
        try:
            await self.wait_connected(timeout)
        except TransportError:
            return False
        transport = self.node.transport
        return transport is not None and await transport.caught_up(max(0.0, end - time.monotonic()))

    async def wait_peers_changed(self, timeout: float) -> bool:
        self.peers_changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.peers_changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_changed(self, timeout: float) -> bool:
        """Until a peer changes or the broker connection goes up or down (or ``timeout``)."""
        self.peers_changed.clear()
        self.link_changed.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self.peers_changed, self.link_changed)]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return bool(done)

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Re-check ``condition`` on every peer-table change until it holds or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while not condition():
            self.peers_changed.clear()
            if (remaining := end - time.monotonic()) <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.peers_changed.wait()
        return True

    async def wait_for_presence(self, device_id: str, timeout: float, since: float | None = None) -> bool:
        """Wait for a presence from ``device_id`` received after ``since`` (default now)."""
        after = time.monotonic() if since is None else since

        def heard() -> bool:
            peer = self.peers.get(device_id)
            return peer is not None and peer.seen > after

        return await self.wait_until(heard, timeout)

    def _departure(self) -> bytes:
        return encode(Departure(session=self.node.session, link=self.link))

    async def _connection_loop(self) -> None:
        delay = 0.1
        was_up = True  # the first failure is news; the retries after it are not (one line per outage)
        while not self._closing:
            self.link += 1
            notice = self.node.seal_announcement(self._departure()) if self._presence is not None else None
            transport = self.connector.connect(notice)
            try:
                async with transport:
                    self.node.transport = transport
                    self.connected.set()
                    self.link_changed.set()
                    delay = 0.1
                    if not was_up:
                        log.info("mesh link up again")
                    was_up = True
                    if self._presence is not None:
                        await self.publish_presence()
                    self._flush_cancels()
                    async for item in self.node.receive(transport, self._unexpected_frame):
                        with self.supervisor.guard("mesh-dispatch", "dropped a message that failed"):
                            self._dispatch(item)
            except TransportError as exc:
                if self._closing:
                    return
                if was_up:
                    log.warning("mesh link down (%s); reconnecting (retries logged at debug level)", exc)
                else:
                    log.debug("mesh link still down (%s); next try in %.1f s", exc, delay)
                was_up = False
            finally:
                self.connected.clear()
                self.link_changed.set()
                if self.node.transport is transport:
                    self.node.transport = None
                # Whatever we were waiting for over this link will not come: fail over now.
                for stream in self._streams.values():
                    stream.fail(LinkDownError("the connection to the mesh dropped"))
            await asyncio.sleep(delay)
            delay = min(self.settings.reconnect_max_s, delay * 2)

    def _unexpected_frame(self, exc: Exception, where: str) -> None:
        """A frame whose checks failed in a way nobody planned for (a bug a peer can trigger): it is
        dropped like a forged one, and counted where the health view shows it."""
        self.supervisor.drop("mesh-frames", type(exc).__name__, exc, f"dropped a frame on {where}")

    async def _housekeeping_loop(self) -> None:
        # Checks _closing too: on 3.11 asyncio.wait_for (inside aiomqtt) can swallow a cancel that
        # races with its result, and a loop that only stops on cancel would then run forever.
        # Each step is guarded on its own: one that fails (a peer's entry, our own advert) must not
        # stop the others, or the next round.
        guard = self.supervisor.guard
        while not self._closing:
            await asyncio.sleep(self.settings.presence_interval_s)
            with guard("mesh-housekeeping", "peer table upkeep failed"):
                for peer in self.peers.expire():
                    log.info("peer %s (%s) aged out", peer.name, peer.device_id[:8])
                    self._lost(peer.device_id, f"{peer.name} went silent (no presence)")
                for device_id in [p.device_id for p in self.peers.all()]:
                    try:
                        self.node.membership.member(device_id)
                    except HearthError as exc:  # expired since its last advert
                        self._forget(device_id, f"no longer a member ({exc})")
            if self.connected.is_set() and self._presence is not None:
                with contextlib.suppress(TransportError):
                    await self.publish_presence()
            with guard("mesh-housekeeping", "saving mesh state failed"):
                self.node.prune_group_keys()
                self.node.save_state()

    async def publish_presence(self) -> None:
        """Announce this device's current advert (raises TransportError). If the advert cannot be
        built, that is logged and counted, and nothing is sent: peers keep the last one until it ages."""
        assert self._presence is not None
        advert: bytes | None = None
        with self.supervisor.guard("mesh-presence", "could not build this device's presence"):
            advert = encode(self._presence())
        if advert is not None:
            await self.node.announce(advert)

    # -- dispatch -------------------------------------------------------------------------------------

    def _dispatch(self, item: Opened | Announced | VanishHint) -> None:
        if isinstance(item, VanishHint):
            self._check_vanished(item.device_id)
            return
        if isinstance(item, Announced):
            self._announced(item)
            return
        sender = item.header.sender
        try:
            msg = decode(item.payload)
        except ValidationError as exc:
            self.dropped["InvalidMessage"] += 1
            log.warning("dropped invalid message from %s: %s", sender[:8], exc.errors()[0]["msg"])
            return
        if item.header.kind != KIND_DIRECT or isinstance(msg, Presence | Departure):
            self.dropped["WrongChannel"] += 1
            log.warning("dropped %s from %s on the wrong channel", msg.type, sender[:8])
            return
        channel = Channel.RESPONSES if isinstance(msg, Chunk | Accepted | Failure | Pong) else None
        if channel is not None and f"/{Channel.RESPONSES.value}/" not in item.header.topic:
            self.dropped["WrongChannel"] += 1
            log.warning("dropped %s from %s sent to a request inbox", msg.type, sender[:8])
            return
        if isinstance(msg, Request):
            self._accept(item.sender, msg)
        elif isinstance(msg, Cancel):
            task = self._serving.get((sender, msg.id))
            if task is not None:
                task.cancel()
        elif isinstance(msg, Chunk | Accepted | Failure):
            stream = self._streams.get(msg.id)
            if stream is not None and stream.peer == sender:
                stream.deliver(msg, self.limits.max_stream_queue)
        elif isinstance(msg, Ping):
            self._spawn(
                self._send(
                    item.sender.device_id, Channel.RESPONSES, Pong(nonce=msg.nonce), session=msg.reply_session
                )
            )
        elif isinstance(msg, Pong):
            waiting = self._pings.get(msg.nonce)
            if waiting is not None and waiting[0] == sender and not waiting[2].done():
                waiting[2].set_result((time.perf_counter() - waiting[1]) * 1000)
        else:
            handler = self._features.get(type(msg))
            if handler is None:
                self.dropped["Unhandled"] += 1
                log.info("no feature here handles %s from %s", msg.type, sender[:8])
                return
            handler(item.sender, msg)

    def _announced(self, item: Announced) -> None:
        opened = item.opened
        sender = opened.header.sender
        try:
            msg = decode(opened.payload)
            if opened.header.kind != KIND_GROUP or not isinstance(msg, Presence | Departure):
                raise ValueError(f"{getattr(msg, 'type', '?')} on the presence board")
        except (ValidationError, ValueError) as exc:
            self.dropped["InvalidMessage"] += 1
            log.warning("dropped a presence-board frame from %s: %s", sender[:8], exc)
            return
        if isinstance(msg, Departure):
            self._departed(sender, msg)
            return
        try:  # an advert is checked like any message: fresh, never replayed
            self.node.opener.check_fresh(opened.header)
            self.node.presence_replay.check(sender, opened.header.counter)
        except PeerError as exc:
            if not item.retained:
                self.dropped[type(exc).__name__] += 1
                log.warning("dropped presence of %s: %s", sender[:8], exc)
            return
        self.node.presence_replay.commit(sender, opened.header.counter)
        if sender == self.device_id:
            self.own_presence_seen = True
            return
        if msg.certificate.device_id != sender:
            self.dropped["InvalidMessage"] += 1
            return
        if msg.crl is not None:
            with contextlib.suppress(HearthError):
                self.node.membership.apply_revocations(msg.crl)
        try:
            cert = self.node.membership.member(sender)
        except HearthError:
            return  # the advert carried a CRL revoking its own sender
        known = self.peers.get(sender)
        if known is not None and known.session != msg.session:
            # The peer restarted: anything it was doing for us died with its old run.
            self._lost(sender, f"{known.name} restarted")
        if self.peers.update(cert, msg) is None:
            self.dropped["PeerTableFull"] += 1
            return
        self.peers_changed.set()
        for hook in self.presence_hooks:  # one feature's failure must not keep the advert from the next
            with self.supervisor.guard("mesh-presence-hooks", "a presence hook failed"):
                hook(opened)

    def _departed(self, sender: str, notice: Departure) -> None:
        peer = self.peers.get(sender)
        if peer is None or (peer.session, peer.presence.link) != (notice.session, notice.link):
            # An old notice (an earlier link's will, replayed or late): the device is still here.
            self.ignored["StaleDeparture"] += 1
            log.info("ignored a departure notice of %s for an earlier connection", sender[:8])
            return
        self._forget(sender, f"{peer.name} left the mesh")

    def _forget(self, device_id: str, reason: str) -> None:
        """A peer is gone (left, crashed, revoked, expired): fail our streams to it and stop serving it
        (nobody is left to read the answer)."""
        peer = self.peers.forget(device_id)
        if peer is not None:
            log.info("peer %s: %s", peer.name, reason)
            self.peers_changed.set()
        self._lost(device_id, reason)
        for (requester, rid), task in list(self._serving.items()):
            if requester == device_id:
                log.info("stopped serving request %s: its requester is gone (%s)", rid[:8], reason)
                task.cancel()

    def _check_vanished(self, device_id: str) -> None:
        """An unsigned 'gone' (an emptied presence topic): believe it only if the peer stops answering."""
        peer = self.peers.get(device_id)
        if peer is None or device_id in self._checking:
            return
        self._checking.add(device_id)

        async def check() -> None:
            try:
                rtt = await self.ping(peer, timeout=self.settings.departure_check_s)
                if rtt is None and self.peers.get(device_id) is peer:
                    self._forget(device_id, f"{peer.name} vanished and does not answer")
                elif rtt is not None:
                    self.dropped["UnconfirmedDeparture"] += 1
                    log.warning("%s was reported gone, but answers: ignored (forged departure?)", peer.name)
            finally:
                self._checking.discard(device_id)

        self._spawn(check())

    def _purge_revoked(self, revoked: frozenset[str]) -> None:
        """A newer CRL: forget those peers, fail our streams to them, stop serving them."""
        for device_id in revoked:
            self._forget(device_id, "revoked")

    def _lost(self, device_id: str, reason: str) -> None:
        for stream in self._streams.values():
            if stream.peer == device_id:
                stream.fail(PeerLostError(reason))

    def _flush_cancels(self) -> None:
        while self._deferred_cancels:
            peer, rid, session = self._deferred_cancels.popleft()
            self._spawn(self._send(peer, Channel.REQUESTS, Cancel(id=rid), session=session))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        self.supervisor.watch(task, "mesh-tasks")

    async def send(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """Seal and send one message (padded to a size bucket); raises TransportError,
        RecipientNotMemberError."""
        await self.node.send(device_id, channel, encode(msg, self.settings.pad_bucket_bytes), session=session)

    async def _send(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        try:
            await self.send(device_id, channel, msg, session=session)
        except (TransportError, RecipientNotMemberError) as exc:
            log.debug("send to %s failed: %s", device_id[:8], exc)

    def session_of(self, device_id: str) -> str | None:
        peer = self.peers.get(device_id)
        return peer.session if peer is not None else None

    # -- serving --------------------------------------------------------------------------------------

    def _accept(self, requester: DeviceCertificate, req: Request) -> None:
        key = (requester.device_id, req.id)
        if key in self._serving:
            return  # a QoS 1 redelivery of a request we are already serving
        refusal = admit(
            req,
            requester,
            self.node.membership.certs.get(self.device_id),
            serving=self.handler is not None,
            in_service=len(self._serving),
            in_service_for_requester=self._serving_by[requester.device_id],
            limits=self.limits,
        )
        if refusal is not None:
            failure = Failure(id=req.id, code=refusal.code, message=refusal.message)
            self._spawn(
                self._send(requester.device_id, Channel.RESPONSES, failure, session=req.reply_session)
            )
            return
        task = asyncio.create_task(self._serve(requester, req), name=f"serve-{req.id[:8]}")
        self._serving[key] = task
        self._serving_by[requester.device_id] += 1

        def done(_: asyncio.Task[None]) -> None:
            self._serving.pop(key, None)
            self._serving_by[requester.device_id] -= 1
            if self._serving_by[requester.device_id] <= 0:
                del self._serving_by[requester.device_id]

        task.add_done_callback(done)

    async def _serve(self, requester: DeviceCertificate, req: Request) -> None:
        assert self.handler is not None
        last_sent = time.monotonic()
        to = requester.device_id

        async def reply(msg: BaseModel) -> None:
            nonlocal last_sent
            last_sent = time.monotonic()
            await self.send(to, Channel.RESPONSES, msg, session=req.reply_session)

        async def keepalive() -> None:
            every = keepalive_every_s(req, self.limits)
            while not self._closing:
                await asyncio.sleep(every)
                if time.monotonic() - last_sent >= every:
                    await reply(Accepted(id=req.id, queue_depth=self.queue_depth))

        ka = asyncio.create_task(keepalive())
        seq = 0
        try:
            await reply(Accepted(id=req.id, queue_depth=self.queue_depth))
            # aclosing: a cancelled request stops the engine now, not when the generator is collected.
            async with (
                asyncio.timeout(min(req.deadline_ms / 1000, self.limits.max_deadline_s)),
                contextlib.aclosing(self._coalesced(self.handler(req, requester))) as chunks,
            ):
                async for chunk in chunks:
                    await reply(chunk.model_copy(update={"id": req.id, "seq": seq}))
                    seq += 1
            self.served += 1
        except asyncio.CancelledError:
            log.info("request %s from %s cancelled", req.id[:8], requester.name)
            raise
        except (TransportError, RecipientNotMemberError) as exc:
            log.warning("request %s from %s: stopped answering (%s)", req.id[:8], requester.name, exc)
        except Exception as exc:  # reported to the requester; the agent keeps serving
            code, message = _failure(exc)
            if code == "internal":
                log.exception("request %s from %s failed", req.id[:8], requester.name)
            with contextlib.suppress(TransportError, RecipientNotMemberError):
                await reply(Failure(id=req.id, code=code, message=message))
        finally:
            await _stop([ka])

    async def _coalesced(self, source: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
        """Chunks produced within ``coalesce_ms`` of each other travel as one: fewer frames, and frame
        sizes that no longer follow each token's length."""
        window = self.settings.coalesce_ms / 1000
        if window <= 0:
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
                end = time.monotonic() + window
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
            await _stop([producer])

    # -- requesting -----------------------------------------------------------------------------------

    async def stream(
        self,
        peer: Peer,
        task: Task,
        body: dict[str, Any],
        *,
        deadline_s: float,
        stall_s: float,
    ) -> AsyncGenerator[Chunk, None]:
        """Send a request to ``peer`` and yield its chunks in order until the final one.

        Raises PeerLostError (died, left, stalled, revoked, link down) or PeerRefusedError (it answered
        with a failure). Closing the iterator before the final chunk cancels the request on the peer.
        """
        rid = secrets.token_hex(16)
        stream = self._streams[rid] = _Stream(peer.device_id, StreamReassembler(self.limits))
        finished = False
        sent = False
        try:
            if not self.connected.is_set():
                raise LinkDownError("not connected to the mesh")
            stall_ms = max(self.limits.min_stall_ms, int(stall_s * 1000))
            request = Request(
                id=rid,
                task=task,
                body=body,
                reply_session=self.node.session,
                deadline_ms=max(1, int(deadline_s * 1000)),
                stall_ms=stall_ms,
            )
            try:
                await self.send(peer.device_id, Channel.REQUESTS, request, session=peer.session)
            except RecipientNotMemberError as exc:
                raise PeerLostError(str(exc)) from None
            except TransportError as exc:
                raise LinkDownError(f"could not send to {peer.name}: {exc}") from exc
            sent = True
            while True:
                try:
                    async with asyncio.timeout(stall_ms / 1000):
                        msg = await stream.queue.get()
                except TimeoutError:
                    raise PeerLostError(
                        f"{peer.name} sent nothing for {stall_ms / 1000:g} s (stalled)"
                    ) from None
                if isinstance(msg, PeerLostError):
                    raise msg
                if isinstance(msg, Failure):
                    finished = True
                    raise PeerRefusedError(msg.code, f"{peer.name}: {msg.message}")
                if isinstance(msg, Accepted):
                    continue
                if msg.final:
                    finished = True
                yield msg
                if msg.final:
                    return
        finally:
            del self._streams[rid]
            if sent and not finished:
                if self.connected.is_set():
                    self._spawn(
                        self._send(peer.device_id, Channel.REQUESTS, Cancel(id=rid), session=peer.session)
                    )
                else:  # our link is down: cancel once it is back, or the peer serves it to the end
                    self._deferred_cancels.append((peer.device_id, rid, peer.session))

    async def ping(self, peer: Peer, timeout: float = 1.0) -> float | None:
        """Round-trip time to ``peer`` in ms (None if it does not answer); kept on the peer as an EWMA."""
        if len(self._pings) >= self.limits.max_pending_pings:
            return None
        nonce = secrets.randbits(62)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[nonce] = (peer.device_id, time.perf_counter(), future)
        try:
            await self.send(
                peer.device_id,
                Channel.REQUESTS,
                Ping(nonce=nonce, reply_session=self.node.session),
                session=peer.session,
            )
            async with asyncio.timeout(timeout):
                rtt = await future
        except (TimeoutError, TransportError, RecipientNotMemberError):
            return None
        finally:
            self._pings.pop(nonce, None)
        peer.rtt_ms = rtt if peer.rtt_ms is None else 0.7 * peer.rtt_ms + 0.3 * rtt
        return rtt
