"""The exchange layer: requests we serve (admission into bounded slots, keepalive, cancel, coalescing,
numbering) and requests we make (streams that fail fast, pings, cancels deferred while our link is
down). It sits on the message layer (which hands it each decoded message) and knows nothing about
engines: a handler turns a Request into Chunks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pydantic import BaseModel

from edge_agent.errors import (
    DirectLinkError,
    LinkDownError,
    PathDownError,
    PeerLostError,
    PeerRefusedError,
    PeerUnreachableError,
    RecipientNotMemberError,
    SessionError,
    TransportError,
)
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel, MessagePath
from edge_agent.mesh.lifetime import Lifetime, stop_tasks
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import (
    Accepted,
    Cancel,
    Chunk,
    DirectContact,
    Failure,
    Ping,
    Pong,
    Request,
    encode,
)
from edge_agent.mesh.rpc import StreamReassembler, admit, keepalive_every_s
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.streams import OpenStream, coalesced, failure_of
from edge_agent.tasks import Task

__all__ = ["Exchanges", "Handler"]

log = logging.getLogger(__name__)

Handler = Callable[[Request, DeviceCertificate], AsyncGenerator[Chunk, None]]
"""Serves one request: yields chunks (id/seq are filled in by the exchange layer), the last one final."""


class Exchanges:
    def __init__(
        self,
        node: MeshNode,
        settings: MeshSettings,
        lifetime: Lifetime,
        connected: asyncio.Event,
        handler: Handler | None,
    ) -> None:
        self.node = node
        self.settings = settings
        self.limits = settings.limits
        self.lifetime = lifetime
        self.connected = connected
        self.handler = handler
        self.served = 0
        """Requests answered in full for peers since the endpoint opened (announced in presence)."""
        self.streams: dict[str, OpenStream] = {}
        self.serving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.serving_by: Counter[str] = Counter()
        self.pings: dict[int, tuple[str, float, asyncio.Future[float]]] = {}
        self.deferred_cancels: deque[tuple[str, str, str]] = deque(maxlen=self.limits.max_pending_pings)
        """(peer, request id, peer session) of streams abandoned while our link was down."""
        self.paths: list[MessagePath] = []
        """Paths tried before the transport, in order (CoAP with OSCORE, direct TLS links), as the
        endpoint carries them."""
        self.contact_of: Callable[[str], DirectContact | None] = lambda device_id: None
        """A peer's announced direct contact (from its presence: set by the endpoint)."""

    # -- sending --------------------------------------------------------------------------------------

    async def send(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> str:
        """Send one message (padded to a size bucket) on the first path that carries it: a direct link
        when there is one with the peer, else sealed through the broker. Returns the path's name.
        Raises TransportError, RecipientNotMemberError, SessionError."""
        payload = encode(msg, self.settings.pad_bucket_bytes)
        if self.paths:
            contact = self.contact_of(device_id)
            for path in self.paths:
                if not path.carries(device_id, contact):
                    continue
                self.node.recipient(device_id)  # every outgoing path checks the peer still belongs
                try:
                    await path.send_message(device_id, contact, channel, payload, session=session)
                    return path.name
                except DirectLinkError as exc:
                    log.info("%s path to %s failed (%s); trying the next", path.name, device_id[:8], exc)
        await self.node.send(device_id, channel, payload, session=session)
        return "broker"

    def path_to(self, device_id: str) -> str:
        """Where a message to ``device_id`` would go now: a path's name, or "broker" (the transport)."""
        contact = self.contact_of(device_id)
        return next((p.name for p in self.paths if p.carries(device_id, contact)), "broker")

    async def send_quietly(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """`send`, where a failure only means the peer misses this message (logged at debug level)."""
        try:
            await self.send(device_id, channel, msg, session=session)
        except (TransportError, RecipientNotMemberError, SessionError) as exc:
            log.debug("send to %s failed: %s", device_id[:8], exc)

    def send_soon(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """`send_quietly` in the background, under the endpoint's lifetime."""
        self.lifetime.spawn(self.send_quietly(device_id, channel, msg, session=session))

    # -- what the message layer hands us --------------------------------------------------------------

    def answer_ping(self, sender: DeviceCertificate, ping: Ping) -> None:
        self.send_soon(
            sender.device_id, Channel.RESPONSES, Pong(nonce=ping.nonce), session=ping.reply_session
        )

    def pong(self, sender: str, pong: Pong) -> None:
        waiting = self.pings.get(pong.nonce)
        if waiting is not None and waiting[0] == sender and not waiting[2].done():
            waiting[2].set_result((time.perf_counter() - waiting[1]) * 1000)

    def deliver(self, sender: str, msg: Chunk | Accepted | Failure) -> None:
        stream = self.streams.get(msg.id)
        if stream is not None and stream.peer == sender:
            stream.deliver(msg, self.limits.max_stream_queue)

    def cancel_served(self, requester: str, request_id: str) -> None:
        task = self.serving.get((requester, request_id))
        if task is not None:
            task.cancel()

    def lost(self, device_id: str, reason: str) -> None:
        """``device_id`` is gone: our streams from it fail now (the router fails over)."""
        for stream in self.streams.values():
            if stream.peer == device_id:
                stream.fail(PeerLostError(reason))

    def stop_serving(self, device_id: str, reason: str) -> None:
        """Nobody is left to read the answers: stop serving ``device_id``."""
        for (requester, rid), task in list(self.serving.items()):
            if requester == device_id:
                log.info("stopped serving request %s: its requester is gone (%s)", rid[:8], reason)
                task.cancel()

    def path_down(self, device_id: str) -> None:
        """The direct link with ``device_id`` closed: streams whose request went on it resume through
        the broker (what was in flight on it is lost)."""
        for stream in self.streams.values():
            if stream.peer == device_id and stream.path != "broker":
                stream.fail(PathDownError(f"the {stream.path} link to {device_id[:8]} closed"))

    def link_dropped(self) -> None:
        """Whatever we were waiting for over the lost link will not come: fail over now."""
        for stream in self.streams.values():
            stream.fail(LinkDownError("the connection to the mesh dropped"))

    def flush_cancels(self) -> None:
        """The link is back: send the cancels of streams abandoned while it was down."""
        while self.deferred_cancels:
            peer, rid, session = self.deferred_cancels.popleft()
            self.send_soon(peer, Channel.REQUESTS, Cancel(id=rid), session=session)

    # -- serving --------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.serving)

    def accept(self, requester: DeviceCertificate, req: Request) -> None:
        key = (requester.device_id, req.id)
        if key in self.serving:
            return  # a QoS 1 redelivery of a request we are already serving
        refusal = admit(
            req,
            requester,
            self.node.membership.certs.get(self.node.device_id),
            serving=self.handler is not None,
            in_service=len(self.serving),
            in_service_for_requester=self.serving_by[requester.device_id],
            limits=self.limits,
        )
        if refusal is not None:
            failure = Failure(id=req.id, code=refusal.code, message=refusal.message)
            self.send_soon(requester.device_id, Channel.RESPONSES, failure, session=req.reply_session)
            return
        task = asyncio.create_task(self._serve(requester, req), name=f"serve-{req.id[:8]}")
        self.serving[key] = task
        self.serving_by[requester.device_id] += 1

        def done(_: asyncio.Task[None]) -> None:
            self.serving.pop(key, None)
            self.serving_by[requester.device_id] -= 1
            if self.serving_by[requester.device_id] <= 0:
                del self.serving_by[requester.device_id]

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
            while not self.lifetime.closing:
                await asyncio.sleep(every)
                if time.monotonic() - last_sent >= every:
                    await reply(Accepted(id=req.id, queue_depth=self.queue_depth))

        ka = asyncio.create_task(keepalive())
        try:
            await reply(Accepted(id=req.id, queue_depth=self.queue_depth))
            # aclosing: a cancelled request stops the engine now, not when the generator is collected.
            async with (
                asyncio.timeout(min(req.deadline_ms / 1000, self.limits.max_deadline_s)),
                contextlib.aclosing(
                    coalesced(self.handler(req, requester), self.settings.coalesce_ms / 1000)
                ) as chunks,
            ):
                seq = 0
                async for chunk in chunks:  # numbered here, and only here, as they leave
                    await reply(chunk.model_copy(update={"id": req.id, "seq": seq}))
                    seq += 1
            self.served += 1
        except asyncio.CancelledError:
            log.info("request %s from %s cancelled", req.id[:8], requester.name)
            raise
        except (TransportError, RecipientNotMemberError, SessionError) as exc:
            log.warning("request %s from %s: stopped answering (%s)", req.id[:8], requester.name, exc)
        except Exception as exc:  # reported to the requester; the agent keeps serving
            code, message = failure_of(exc)
            if code == "internal":
                log.exception("request %s from %s failed", req.id[:8], requester.name)
            with contextlib.suppress(TransportError, RecipientNotMemberError, SessionError):
                await reply(Failure(id=req.id, code=code, message=message))
        finally:
            await stop_tasks([ka])

    # -- requesting -----------------------------------------------------------------------------------

    async def stream(
        self, peer: Peer, task: Task, body: dict[str, Any], *, deadline_s: float, stall_s: float
    ) -> AsyncGenerator[Chunk, None]:
        """Send a request to ``peer`` and yield its chunks in order until the final one.

        Raises PeerLostError (died, left, stalled, revoked), LinkDownError (our own link dropped) or
        PeerRefusedError (it answered with a failure). Closing the iterator before the final chunk
        cancels the request on the peer.
        """
        rid = secrets.token_hex(16)
        stream = self.streams[rid] = OpenStream(peer.device_id, StreamReassembler(self.limits))
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
                stream.path = await self.send(peer.device_id, Channel.REQUESTS, request, session=peer.session)
            except (RecipientNotMemberError, SessionError) as exc:
                raise PeerLostError(str(exc)) from None
            except PeerUnreachableError as exc:  # that peer is out of reach, not our link: fail over
                raise PeerLostError(f"could not send to {peer.name}: {exc}") from None
            except TransportError as exc:
                raise LinkDownError(f"could not send to {peer.name}: {exc}") from exc
            sent = True
            while True:
                try:
                    async with asyncio.timeout(stall_ms / 1000):
                        msg = await stream.queue.get()
                except TimeoutError:
                    path = next((p for p in self.paths if p.name == stream.path), None)
                    if path is not None:
                        # A silent link (a cable pulled, a route gone) is not a dead peer: once more,
                        # through the broker; if the peer is gone, that attempt stalls too.
                        path.give_up_on(peer.device_id)
                        raise PathDownError(
                            f"{peer.name} sent nothing on the {stream.path} link for {stall_ms / 1000:g} s"
                        ) from None
                    raise PeerLostError(
                        f"{peer.name} sent nothing for {stall_ms / 1000:g} s (stalled)"
                    ) from None
                if isinstance(msg, PeerLostError | LinkDownError):
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
            del self.streams[rid]
            if sent and not finished:
                if self.connected.is_set():
                    self.send_soon(peer.device_id, Channel.REQUESTS, Cancel(id=rid), session=peer.session)
                else:  # our link is down: cancel once it is back, or the peer serves it to the end
                    self.deferred_cancels.append((peer.device_id, rid, peer.session))

    async def ping(self, peer: Peer, timeout: float = 1.0) -> float | None:
        """Round-trip time to ``peer`` in ms (None if it does not answer); kept on the peer as an EWMA."""
        if len(self.pings) >= self.limits.max_pending_pings:
            return None
        nonce = secrets.randbits(62)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pings[nonce] = (peer.device_id, time.perf_counter(), future)
        try:
            await self.send(
                peer.device_id,
                Channel.REQUESTS,
                Ping(nonce=nonce, reply_session=self.node.session),
                session=peer.session,
            )
            async with asyncio.timeout(timeout):
                rtt = await future
        except (TimeoutError, TransportError, RecipientNotMemberError, SessionError):
            return None
        finally:
            self.pings.pop(nonce, None)
        peer.rtt_ms = rtt if peer.rtt_ms is None else 0.7 * peer.rtt_ms + 0.3 * rtt
        return rtt
