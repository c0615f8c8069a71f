"""The mesh endpoint: the one entry object that composes the mesh layers, like aiocoap's Context.

- messages (`messages.py`): the connection loop, decoding, wrong-channel checks, dispatch by type;
- exchanges (`exchanges.py`): requests served (slots, keepalive, cancel, coalescing, numbering) and
  made (streams that fail fast with PeerLostError or LinkDownError, pings, deferred cancels);
- presence and the peer directory (`directory.py`): our advert, peers' adverts and departures, the
  peer table's upkeep.

Its loops run under the supervisor for as long as it is open; features (translation memory,
corrections, group keys, updates) use it through `FeaturePort` only. Knows nothing about engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from edge_agent.errors import TransportError
from edge_agent.mesh.directory import PresenceDirectory, PresenceFields, PresenceHook
from edge_agent.mesh.exchanges import Exchanges, Handler
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel, Connector, MessagePath
from edge_agent.mesh.lifetime import Lifetime
from edge_agent.mesh.messages import MessageLayer
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.peers import Peer, PeerTable
from edge_agent.mesh.protocol import DirectContact, Presence
from edge_agent.mesh.settings import MeshLimits, MeshSettings
from edge_agent.supervision import Supervisor
from edge_agent.tasks import Task

log = logging.getLogger(__name__)

__all__ = ["EndpointState", "Handler", "MeshEndpoint"]

M = TypeVar("M", bound=BaseModel)


class EndpointState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _remover(hooks: list[Any], hook: Any) -> Callable[[], None]:
    def remove() -> None:
        with contextlib.suppress(ValueError):
            hooks.remove(hook)

    return remove


class MeshEndpoint:
    """This device on the mesh: open it (``async with``) to connect, serve, and hear peers."""

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
        self.settings = settings or MeshSettings()
        self.state = EndpointState.UNOPENED
        self.connected = asyncio.Event()
        self.lifetime = Lifetime(self.supervisor)
        self.exchanges = Exchanges(node, self.settings, self.lifetime, self.connected, handler)
        self.directory = PresenceDirectory(
            node, self.settings, self.supervisor, self.lifetime, self.exchanges, presence, self.connected
        )
        self.messages = MessageLayer(
            node,
            connector,
            self.settings,
            self.supervisor,
            self.connected,
            self.exchanges,
            self.directory,
            closing=lambda: self.lifetime.closing,
        )
        # The router's view (mesh.interfaces.PeerDirectory) and the pings, bound straight to what
        # answers (the membership, the peer table, the directory, the exchanges): on the offloaded
        # chat's path each is one call, not a forward and then the call.
        peers = self.directory.peers
        self.known: Callable[[], list[Peer]] = peers.all
        """Every peer heard from recently (`PeerTable.all`)."""
        self.is_member: Callable[[str], bool] = node.membership.is_member
        self.own_requests: Callable[[], list[Task]] = functools.partial(
            node.membership.requests_of, node.device_id
        )
        """Tasks this device's certificate allows it to request from peers."""
        self.ban: Callable[[str, float], None] = peers.ban
        self.succeeded = peers.succeeded
        """A peer answered: clear its failures, fold the measured throughput in (`PeerTable.succeeded`)."""
        self.stream = self.exchanges.stream
        """Send a request to a peer and yield its chunks in order (`Exchanges.stream`)."""
        self.ping = self.exchanges.ping
        """Round-trip time to a peer in ms, None if it does not answer (`Exchanges.ping`)."""
        self.wait_until = self.directory.wait_until
        """Re-check a condition on every peer-table change until it holds or the timeout passes."""

        def contact_of(device_id: str) -> DirectContact | None:
            peer = peers.get(device_id)
            return peer.presence.direct if peer is not None else None

        self.exchanges.contact_of = contact_of

    # -- state, for the agent, the router, diagnostics and tests ------------------------------------

    @property
    def limits(self) -> MeshLimits:
        return self.settings.limits

    @property
    def device_id(self) -> str:
        return self.node.device_id

    @property
    def dropped(self) -> Counter[str]:
        return self.node.dropped

    @property
    def connector(self) -> Connector:
        return self.messages.connector

    @connector.setter
    def connector(self, connector: Connector) -> None:
        self.messages.connector = connector

    @property
    def handler(self) -> Handler | None:
        return self.exchanges.handler

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        self.exchanges.handler = handler

    @property
    def peers(self) -> PeerTable:
        return self.directory.peers

    @property
    def peers_changed(self) -> asyncio.Event:
        return self.directory.changed

    @property
    def link_changed(self) -> asyncio.Event:
        """Set when the broker connection comes up or goes down (watchers of reachability: not the
        router, which waits for peers themselves to come back)."""
        return self.messages.link_changed

    @property
    def link(self) -> int:
        """Connection number within this session (see protocol.Departure)."""
        return self.messages.link

    @property
    def link_up(self) -> bool:
        return self.connected.is_set()

    @property
    def presence_hooks(self) -> list[PresenceHook]:
        """Called with every verified, fresh advert (prefer `watch_presence`, which can be undone)."""
        return self.directory.hooks

    @property
    def own_presence_seen(self) -> bool:
        return self.directory.own_presence_seen

    @property
    def ignored(self) -> Counter[str]:
        """Harmless frames set aside (an earlier connection's will, fired late by a session takeover)."""
        return self.directory.ignored

    @property
    def served(self) -> int:
        """Requests answered in full for peers since this endpoint opened (announced in presence)."""
        return self.exchanges.served

    @property
    def queue_depth(self) -> int:
        return self.exchanges.queue_depth

    @property
    def streams_open(self) -> int:
        """Answers we are waiting for from peers (our own offloaded requests)."""
        return len(self.exchanges.streams)

    def streaming_from(self) -> list[str]:
        """The devices whose answers we are waiting for now (diagnostics, tests)."""
        return [stream.peer for stream in self.exchanges.streams.values()]

    # -- the router's view (mesh.interfaces.PeerDirectory; known, is_member, own_requests, ban, succeeded,
    # stream and wait_until are bound in __init__) ------------------------------------------------

    def session_of(self, device_id: str) -> str | None:
        return self.directory.session_of(device_id)

    def path_to(self, device_id: str) -> str:
        """Where a message to ``device_id`` would go now: a direct path's name, or "broker"."""
        return self.exchanges.path_to(device_id)

    def envelope_to(self, device_id: str) -> int:
        """2 when messages to ``device_id`` travel on forward-secret sessions, else 1."""
        sessions = self.node.sessions
        return 2 if sessions is not None and device_id in sessions.speakers else 1

    # -- the features' view (mesh.interfaces.FeaturePort) ---------------------------------------------

    def register(self, message_type: type[M], handler: Callable[[DeviceCertificate, M], None]) -> None:
        """Route verified direct messages of ``message_type`` to a feature (memory, rekeying, ...)."""
        self.messages.handlers[message_type] = handler

    def handler_for(self, message_type: type[BaseModel]) -> Callable[[DeviceCertificate, Any], None] | None:
        """The feature handler registered for ``message_type`` (tests wrap it to count traffic)."""
        return self.messages.handlers.get(message_type)

    async def send(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """Seal and send one message (padded to a size bucket); raises TransportError,
        RecipientNotMemberError."""
        await self.exchanges.send(device_id, channel, msg, session=session)

    async def send_quietly(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        await self.exchanges.send_quietly(device_id, channel, msg, session=session)

    def send_soon(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        self.exchanges.send_soon(device_id, channel, msg, session=session)

    def carry(self, path: MessagePath, *, first: bool = False) -> Callable[[], None]:
        """Send requests, streams and pings on ``path`` (direct links, CoAP) before the transport (after
        the paths carried already, or before them with ``first``), and take in what it carries;
        returns what stops that."""
        paths = self.exchanges.paths
        paths.insert(0 if first else len(paths), path)
        path.carry(self.messages)

        def stop() -> None:
            if path in paths:
                paths.remove(path)
                path.carry(None)

        return stop

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        return self.lifetime.spawn(coro, name=name)

    def watch_presence(self, hook: PresenceHook) -> Callable[[], None]:
        self.directory.hooks.append(hook)
        return _remover(self.directory.hooks, hook)

    def contribute_presence(self, fields: Callable[[], Mapping[str, Any]]) -> Callable[[], None]:
        contribution: PresenceFields = fields
        self.directory.contributions.append(contribution)
        return _remover(self.directory.contributions, contribution)

    def advert(self, base: Presence) -> Presence:
        """``base`` with the fields features contribute (for an advert sent outside the endpoint)."""
        return self.directory.advert(base)

    async def republish_presence(self) -> None:
        if self.directory.presence is not None:
            await self.directory.publish()

    async def publish_presence(self) -> None:
        """Announce this device's current advert (raises TransportError). If the advert cannot be
        built, that is logged and counted, and nothing is sent: peers keep the last one until it ages."""
        await self.directory.publish()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not EndpointState.UNOPENED:
            raise RuntimeError(f"this endpoint is {self.state.value}; make a new one")
        self.state = EndpointState.OPEN
        self.lifetime.start_loop("mesh-connection", self.messages.connection_loop)
        self.lifetime.start_loop("mesh-housekeeping", self.directory.housekeeping_loop)
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
        self.lifetime.closing = True
        serving = list(self.exchanges.serving.values())
        for task in serving:
            task.cancel()
        if clean and self.connected.is_set() and self.directory.presence is not None:
            with contextlib.suppress(TransportError):
                await self.node.announce(self.messages.departure())
        await self.lifetime.stop(*self.exchanges.serving.values())
        transport, self.node.transport = self.node.transport, None
        if transport is not None:
            with contextlib.suppress(TransportError):
                await transport.aclose()
        self.node.save_state()

    # -- waiting --------------------------------------------------------------------------------------

    async def wait_connected(self, timeout: float) -> None:
        """Until the link is up; raises TransportError after ``timeout``."""
        await self.messages.wait_connected(timeout)

    async def caught_up(self, timeout: float) -> bool:
        """True once what the broker held for us when we connected (the presence board's adverts,
        this device's own included) has been taken in here; False after ``timeout`` (or no link)."""
        return await self.messages.caught_up(timeout)

    async def wait_peers_changed(self, timeout: float) -> bool:
        return await self.directory.wait_changed(timeout)

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

    async def wait_for_presence(self, device_id: str, timeout: float, since: float | None = None) -> bool:
        """Wait for a presence from ``device_id`` received after ``since`` (default now)."""
        return await self.directory.wait_for_presence(device_id, timeout, since)
