"""The request/stream protocol on top of a MeshNode: presence, serving, streaming, cancellation.

One reader task owns the connection and dispatches each verified message; it reconnects with backoff
when the broker goes away. A requester's stream fails fast (PeerLostError) when its peer's presence is
emptied by the broker (last will), when the peer ages out, or when nothing arrives within the stall
timeout (servers send keepalives while queued), so the router can fail over. Knows nothing about
engines: a handler turns a Request into Chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import (
    BudgetExceededError,
    HearthError,
    InvalidRequestError,
    LinkDownError,
    NoLocalModelError,
    PeerLostError,
    PeerRefusedError,
)
from edge_agent.mesh import topics
from edge_agent.mesh.envelope import KIND_DIRECT, KIND_GROUP, Opened
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import TransportError
from edge_agent.mesh.memory import MemoryEntry, TranslationMemory, digest
from edge_agent.mesh.node import Departed, MeshNode
from edge_agent.mesh.peers import Peer, PeerTable
from edge_agent.mesh.protocol import (
    Accepted,
    Cancel,
    Chunk,
    Failure,
    FailureCode,
    GroupKey,
    MemoryHits,
    MemoryQuery,
    Ping,
    Pong,
    Presence,
    Request,
    decode,
    encode,
)
from edge_agent.tasks import Task

log = logging.getLogger(__name__)
MEMORY_REPLY_CHARS = 200_000  # keeps a memory answer far below the envelope's frame limit

Handler = Callable[[Request, DeviceCertificate], AsyncGenerator[Chunk, None]]
"""Serves one request: yields chunks (id/seq are filled in by the endpoint), the last one final."""


@dataclass
class _Stream:
    peer: str
    queue: asyncio.Queue[Chunk | Accepted | Failure | PeerLostError] = field(default_factory=asyncio.Queue)
    next_seq: int = 0
    early: dict[int, Chunk] = field(default_factory=dict)

    def deliver(self, msg: Chunk | Accepted | Failure) -> None:
        if not isinstance(msg, Chunk):
            self.queue.put_nowait(msg)
            return
        if msg.seq < self.next_seq or msg.seq in self.early:
            return  # a QoS 1 redelivery
        if len(self.early) > 1024:
            self.queue.put_nowait(PeerLostError("stream gap: chunks missing"))
            return
        self.early[msg.seq] = msg
        while self.next_seq in self.early:
            self.queue.put_nowait(self.early.pop(self.next_seq))
            self.next_seq += 1


async def _stop(tasks: list[asyncio.Task[None]], patience_s: float = 15.0) -> None:
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


def _failure_code(exc: BaseException) -> FailureCode:
    if isinstance(exc, InvalidRequestError | ValidationError):
        return "invalid"
    if isinstance(exc, NoLocalModelError):
        return "not-served"
    if isinstance(exc, BudgetExceededError):
        return "busy"
    if isinstance(exc, TimeoutError):
        return "deadline"
    return "internal"


class MeshEndpoint:
    def __init__(
        self,
        node: MeshNode,
        *,
        presence: Callable[[], Presence] | None,
        handler: Handler | None = None,
        presence_interval_s: float = 5.0,
        max_concurrent: int = 8,
        reconnect_max_s: float = 5.0,
        on_group_key: Callable[[bytes, int], None] | None = None,
        memory: TranslationMemory | None = None,
    ) -> None:
        self.node = node
        self.memory = memory
        """Shared translation memory answered to peers' queries; None: queries get no answer."""
        self._memory_waits: dict[int, tuple[set[str], list[MemoryEntry], asyncio.Event]] = {}
        self._presence = presence
        self.handler = handler
        self.on_group_key = on_group_key
        """Called after adopting a new group key from the hub, to persist it."""
        self._rekeyed: dict[str, float] = {}
        self.presence_interval_s = presence_interval_s
        self.max_concurrent = max_concurrent
        self.reconnect_max_s = reconnect_max_s
        self.peers = PeerTable(node.device_id)
        self.connected = asyncio.Event()
        self.peers_changed = asyncio.Event()
        self._streams: dict[str, _Stream] = {}
        self._serving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._pings: dict[int, tuple[str, float, asyncio.Future[float]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.own_presence_seen = False

    @property
    def device_id(self) -> str:
        return self.node.device_id

    @property
    def queue_depth(self) -> int:
        return len(self._serving)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> MeshEndpoint:
        self._tasks.append(asyncio.create_task(self._connection_loop(), name="mesh-connection"))
        self._tasks.append(asyncio.create_task(self._housekeeping_loop(), name="mesh-housekeeping"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, clean: bool = True) -> None:
        """Stop serving; with ``clean`` also empty our retained presence so peers see us leave now."""
        self._closing = True
        for task in list(self._serving.values()):
            task.cancel()
        if clean and self.connected.is_set() and self._presence is not None:
            with contextlib.suppress(TransportError):
                await self.node.transport.publish(
                    topics.presence(self.node.household, self.device_id), b"", retain=True
                )
        await _stop(list(self._tasks) + list(self._serving.values()))
        self._tasks.clear()
        self.node.save_state()

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise TransportError(f"no connection to the MQTT broker within {timeout:g} s") from None

    async def wait_peers_changed(self, timeout: float) -> bool:
        self.peers_changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.peers_changed.wait()
        except TimeoutError:
            return False
        return True

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
        """Wait for a presence from ``device_id`` received after ``since`` (default now): it has
        (re)connected and subscribed."""
        after = time.monotonic() if since is None else since

        def heard() -> bool:
            peer = self.peers.get(device_id)
            return peer is not None and peer.seen > after

        return await self.wait_until(heard, timeout)

    async def _connection_loop(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                async with self.node.transport:
                    await self.node.start()
                    self.connected.set()
                    delay = 0.1
                    if self._presence is not None:
                        await self.publish_presence()
                    async for item in self.node.receive():
                        self._dispatch(item)
            except TransportError as exc:
                if self._closing:
                    return
                log.warning("mesh link down (%s); reconnecting in %.1f s", exc, delay)
            finally:
                self.connected.clear()
            # Whatever we were waiting for over this link will not come: fail over now.
            for stream in self._streams.values():
                stream.queue.put_nowait(LinkDownError("the connection to the broker dropped"))
            await asyncio.sleep(delay)
            delay = min(self.reconnect_max_s, delay * 2)

    async def _housekeeping_loop(self) -> None:
        # Checks _closing too: on 3.11 asyncio.wait_for (inside aiomqtt) can swallow a cancel that
        # races with its result, and a loop that only stops on cancel would then run forever.
        while not self._closing:
            await asyncio.sleep(self.presence_interval_s)
            for peer in self.peers.expire():
                log.info("peer %s (%s) aged out", peer.name, peer.device_id[:8])
                self._lost(peer.device_id, f"{peer.name} went silent (no presence)")
            if self.connected.is_set() and self._presence is not None:
                with contextlib.suppress(TransportError):
                    await self.publish_presence()
            self.node.save_state()

    async def publish_presence(self) -> None:
        assert self._presence is not None
        presence = self._presence()
        await self.node.broadcast(
            topics.presence(self.node.household, self.device_id), encode(presence), retain=True
        )

    # -- dispatch -------------------------------------------------------------------------------------

    def _dispatch(self, item: Opened | Departed) -> None:
        if isinstance(item, Departed):
            peer = self.peers.forget(item.device_id)
            if peer is not None:
                log.info("peer %s left the mesh", peer.name)
                self.peers_changed.set()
            self._lost(item.device_id, f"{peer.name if peer else item.device_id} left the mesh")
            return
        sender = item.header.sender
        try:
            msg = decode(item.payload)
        except ValidationError as exc:
            self.node.dropped["InvalidMessage"] += 1
            log.warning("dropped invalid message from %s: %s", sender[:8], exc.errors()[0]["msg"])
            return
        on_presence_topic = topics.presence_device(item.header.topic) is not None
        expected_kind = KIND_GROUP if isinstance(msg, Presence) else KIND_DIRECT
        if item.header.kind != expected_kind or on_presence_topic != isinstance(msg, Presence):
            self.node.dropped["WrongChannel"] += 1
            log.warning(
                "dropped %s from %s on the wrong channel (%s)", msg.type, sender[:8], item.header.topic
            )
            return
        if item.header.kind == KIND_GROUP and item.header.epoch < self.node.group_epoch:
            self._rekey(item.sender)
        if isinstance(msg, Presence):
            if sender == self.device_id:
                self.own_presence_seen = True
            elif msg.certificate.device_id == sender:
                self.peers.update(item.sender, msg)
                if msg.crl is not None:
                    with contextlib.suppress(HearthError):
                        self.node.membership.apply_revocations(msg.crl)
                self.peers_changed.set()
        elif isinstance(msg, Request):
            self._accept(item.sender, msg)
        elif isinstance(msg, Cancel):
            task = self._serving.get((sender, msg.id))
            if task is not None:
                task.cancel()
        elif isinstance(msg, Chunk | Accepted | Failure):
            stream = self._streams.get(msg.id)
            if stream is not None and stream.peer == sender:
                stream.deliver(msg)
        elif isinstance(msg, Ping):
            self._spawn(self._send(item.sender, topics.responses, Pong(nonce=msg.nonce)))
        elif isinstance(msg, Pong):
            waiting = self._pings.get(msg.nonce)
            if waiting is not None and waiting[0] == sender and not waiting[2].done():
                waiting[2].set_result((time.perf_counter() - waiting[1]) * 1000)
        elif isinstance(msg, GroupKey):
            self._adopt_group_key(item.sender, msg)
        elif isinstance(msg, MemoryQuery):
            self._answer_memory(item.sender, msg)
        elif isinstance(msg, MemoryHits):
            asked = self._memory_waits.get(msg.nonce)
            if asked is not None and sender in asked[0]:
                asked[0].discard(sender)
                asked[1].extend(msg.entries)
                if not asked[0]:
                    asked[2].set()

    # -- shared translation memory --------------------------------------------------------------------

    def _answer_memory(self, requester: DeviceCertificate, query: MemoryQuery) -> None:
        if self.memory is None:
            return  # policy off: stay silent, the requester's short timeout covers it
        if "translate" not in requester.requests:
            self.node.dropped["Forbidden"] += 1
            log.warning(
                "dropped a memory query from %s: its certificate does not allow translate", requester.name
            )
            return
        hits: list[MemoryEntry] = []
        size = 0
        for entry in self.memory.lookup(query.keys):
            size += len(entry.source) + len(entry.translation)
            if entry.pair != query.pair or size > MEMORY_REPLY_CHARS:
                continue
            hits.append(entry)
        self._spawn(self._send(requester, topics.responses, MemoryHits(nonce=query.nonce, entries=hits)))

    async def ask_memory(
        self, pair: str, sentences: dict[str, str], timeout: float
    ) -> dict[str, MemoryEntry]:
        """Ask every live peer that keeps a shared memory for translations of ``sentences`` (digest ->
        normalized sentence; the first 256 are asked).

        Returns verified entries by digest: signed by a current household member, fresh, and for exactly
        the sentence asked. Waits until every peer answered or ``timeout``.
        """
        now = time.monotonic()
        peers = [p for p in self.peers.all() if p.alive(now) and p.presence.translation_memory]
        if not peers or not sentences or not self.connected.is_set():
            return {}
        nonce = secrets.randbits(62)
        waiting: tuple[set[str], list[MemoryEntry], asyncio.Event] = (
            {p.device_id for p in peers},
            [],
            asyncio.Event(),
        )
        self._memory_waits[nonce] = waiting
        query = encode(MemoryQuery(nonce=nonce, pair=pair, keys=list(sentences)[:256]))
        try:
            for peer in peers:
                with contextlib.suppress(TransportError):
                    inbox = topics.requests(self.node.household, peer.device_id)
                    await self.node.send(peer.certificate, inbox, query)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiting[2].wait()
        finally:
            self._memory_waits.pop(nonce, None)
        return self._verified_entries(pair, sentences, waiting[1])

    def _verified_entries(
        self, pair: str, sentences: dict[str, str], entries: list[MemoryEntry]
    ) -> dict[str, MemoryEntry]:
        salt = self.memory.salt if self.memory is not None else b""
        found: dict[str, MemoryEntry] = {}
        for entry in entries:
            key = digest(pair, entry.source, salt)
            if entry.pair != pair or sentences.get(key) != entry.source or key in found:
                continue
            try:
                producer = self.node.membership.member(entry.producer)
            except HearthError:
                self.node.dropped["MemoryNotAMember"] += 1
                continue
            if not entry.verify(producer.verify_key) or (self.memory and not self.memory.fresh(entry)):
                self.node.dropped["MemoryForged"] += 1
                log.warning(
                    "dropped a translation-memory entry with a bad signature (claims %s)", producer.name
                )
                continue
            found[key] = entry
        return found

    # -- group key rotation ---------------------------------------------------------------------------

    def _adopt_group_key(self, sender: DeviceCertificate, msg: GroupKey) -> None:
        if not sender.admin:
            self.node.dropped["Forbidden"] += 1
            log.warning("dropped a group key from %s: only the hub may rotate it", sender.name)
            return
        if self.node.use_group_key(bytes.fromhex(msg.key), msg.epoch):
            log.info("household group key rotated to epoch %d by %s", msg.epoch, sender.name)
            if self.on_group_key is not None:
                self.on_group_key(bytes.fromhex(msg.key), msg.epoch)

    def _own_certificate(self) -> DeviceCertificate | None:
        return self.node.membership.certs.get(self.device_id)

    def _rekey(self, member: DeviceCertificate, min_interval_s: float = 5.0) -> None:
        """A member still seals broadcasts with an old group key: the hub sends it the current one."""
        own = self._own_certificate()
        if own is None or not own.admin or member.device_id == self.device_id:
            return
        now = time.monotonic()
        if now - self._rekeyed.get(member.device_id, -min_interval_s) < min_interval_s:
            return
        self._rekeyed[member.device_id] = now
        self._send_group_key(member)

    def _send_group_key(self, member: DeviceCertificate) -> None:
        key = GroupKey(epoch=self.node.group_epoch, key=self.node.group_key.hex())
        self._spawn(self._send(member, topics.requests, key))

    def distribute_group_key(self) -> None:
        """After a revocation: seal the new group key to every member still in the household (each
        with its own pairwise key, so the revoked device cannot read it). Members offline now get it
        from _rekey when their next broadcast still uses the old key."""
        members = self.node.membership
        for device_id, cert in list(members.certs.items()):
            if device_id not in members.revoked and device_id != self.device_id:
                self._send_group_key(cert)

    def _lost(self, device_id: str, reason: str) -> None:
        for stream in self._streams.values():
            if stream.peer == device_id:
                stream.queue.put_nowait(PeerLostError(reason))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _send(self, to: DeviceCertificate, topic_for: Callable[[str, str], str], msg: Any) -> None:
        try:
            await self.node.send(to, topic_for(self.node.household, to.device_id), encode(msg))
        except TransportError as exc:
            log.debug("send to %s failed: %s", to.name, exc)

    # -- serving --------------------------------------------------------------------------------------

    def _accept(self, requester: DeviceCertificate, req: Request) -> None:
        key = (requester.device_id, req.id)
        if key in self._serving:
            return  # a QoS 1 redelivery of a request we are already serving
        own = self.node.membership.certs.get(self.device_id)
        refusal: tuple[FailureCode, str] | None = None
        if req.task not in requester.requests:
            refusal = ("forbidden", f"{requester.name}'s certificate does not allow requesting {req.task}")
        elif self.handler is None or own is None or req.task not in own.serves:
            refusal = ("not-served", f"this device does not serve {req.task}")
        elif len(self._serving) >= self.max_concurrent:
            refusal = ("busy", f"{len(self._serving)} requests in progress")
        if refusal is not None:
            self._spawn(self._send(requester, topics.responses, Failure(id=req.id, code=refusal[0],
                                                                        message=refusal[1])))  # fmt: skip
            return
        task = asyncio.create_task(self._serve(requester, req), name=f"serve-{req.id[:8]}")
        self._serving[key] = task
        task.add_done_callback(lambda _: self._serving.pop(key, None))

    async def _serve(self, requester: DeviceCertificate, req: Request) -> None:
        assert self.handler is not None
        last_sent = time.monotonic()

        async def reply(msg: Any) -> None:
            nonlocal last_sent
            last_sent = time.monotonic()
            await self.node.send(requester, topics.responses(self.node.household, requester.device_id),
                                 encode(msg))  # fmt: skip

        async def keepalive() -> None:
            every = req.stall_ms / 3000
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
                asyncio.timeout(req.deadline_ms / 1000),
                contextlib.aclosing(self.handler(req, requester)) as chunks,
            ):
                async for chunk in chunks:
                    await reply(chunk.model_copy(update={"id": req.id, "seq": seq}))
                    seq += 1
        except asyncio.CancelledError:
            log.info("request %s from %s cancelled", req.id[:8], requester.name)
            raise
        except TransportError as exc:
            log.warning(
                "request %s from %s: lost the link while answering (%s)", req.id[:8], requester.name, exc
            )
        except Exception as exc:  # reported to the requester; the agent keeps serving
            code = _failure_code(exc)
            if code == "internal":
                log.exception("request %s from %s failed", req.id[:8], requester.name)
            with contextlib.suppress(TransportError):
                await reply(Failure(id=req.id, code=code, message=str(exc)[:2000] or type(exc).__name__))
        finally:
            await _stop([ka])

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

        Raises PeerLostError (died, left, stalled, link down) or PeerRefusedError (it answered with a
        failure). Closing the iterator early cancels the request on the peer.
        """
        rid = secrets.token_hex(16)
        stream = self._streams[rid] = _Stream(peer.device_id)
        finished = False
        try:
            if not self.connected.is_set():
                raise LinkDownError("not connected to the broker")
            request = Request(id=rid, task=task, body=body, deadline_ms=max(1, int(deadline_s * 1000)),
                              stall_ms=max(50, int(stall_s * 1000)))  # fmt: skip
            try:
                await self.node.send(peer.certificate, topics.requests(self.node.household, peer.device_id),
                                     encode(request))  # fmt: skip
            except TransportError as exc:
                raise LinkDownError(f"could not send to {peer.name}: {exc}") from exc
            while True:
                try:
                    async with asyncio.timeout(stall_s):
                        msg = await stream.queue.get()
                except TimeoutError:
                    raise PeerLostError(f"{peer.name} sent nothing for {stall_s:g} s (stalled)") from None
                if isinstance(msg, PeerLostError):
                    raise msg
                if isinstance(msg, Failure):
                    finished = True
                    raise PeerRefusedError(msg.code, f"{peer.name}: {msg.message}")
                if isinstance(msg, Accepted):
                    continue
                yield msg
                if msg.final:
                    finished = True
                    return
        finally:
            del self._streams[rid]
            if not finished and self.connected.is_set():
                self._spawn(self._send(peer.certificate, topics.requests, Cancel(id=rid)))

    async def ping(self, peer: Peer, timeout: float = 1.0) -> float | None:
        """Round-trip time to ``peer`` in ms (None if it does not answer); kept on the peer as an EWMA."""
        nonce = secrets.randbits(62)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[nonce] = (peer.device_id, time.perf_counter(), future)
        try:
            await self.node.send(peer.certificate, topics.requests(self.node.household, peer.device_id),
                                 encode(Ping(nonce=nonce)))  # fmt: skip
            async with asyncio.timeout(timeout):
                rtt = await future
        except (TimeoutError, TransportError):
            return None
        finally:
            self._pings.pop(nonce, None)
        peer.rtt_ms = rtt if peer.rtt_ms is None else 0.7 * peer.rtt_ms + 0.3 * rtt
        return rtt
