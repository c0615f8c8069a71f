"""`DirectLinks`: this device's direct links as one object with a lifetime, a `BulkPath` and a
`MessagePath` (path "direct") under the mesh's transport interface. Opening makes a fresh certificate
and starts the server (when this device serves); the client side asks holders over links made on first
use; messages go on whichever link with the peer is up."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections import Counter
from types import TracebackType
from typing import Self

from edge_agent.errors import DirectLinkError
from edge_agent.mesh.direct.addresses import Network, local_network
from edge_agent.mesh.direct.carrier import LinkEvents
from edge_agent.mesh.direct.client import Link, LinkClient
from edge_agent.mesh.direct.frames import Ask
from edge_agent.mesh.direct.server import LinkServer, Serve
from edge_agent.mesh.direct.tls import fingerprint, listen, self_signed, server_context
from edge_agent.mesh.interfaces import Channel, Piece
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import DirectContact
from edge_agent.mesh.settings import DirectLimits
from edge_agent.supervision import Supervisor

__all__ = ["DirectLinks", "DirectState"]

log = logging.getLogger(__name__)


class DirectState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class DirectLinks:
    """This device's direct links: a TLS server for members' asks, and links to peers it asks."""

    name = "direct"
    """Its name as a bulk path (what `UpdateExchange.received` counts by)."""

    def __init__(
        self,
        node: MeshNode,
        serve: Serve | None,
        *,
        host: str | None,
        port: int = 0,
        network: Network | None = None,
        supervisor: Supervisor | None = None,
        limits: DirectLimits | None = None,
    ) -> None:
        """``host`` None (or ``serve`` None): ask only, listen nowhere (a one-shot command's links).
        ``network``: where peers' contacts may point (default: `local_network` of ``host``; with
        neither, no peer is ever reached directly). ``limits``: every bound of the links (default: the
        node's, `MeshLimits.direct`)."""
        self.node = node
        self.serve = serve
        self.host, self.port = host, port
        if network is None and host is not None:
            with contextlib.suppress(ValueError):  # a name, or no address: no direct asks
                network = local_network(host)
        self.network = network
        self.limits = limits or node.limits.direct
        self.supervisor = supervisor or Supervisor()
        self.state = DirectState.UNOPENED
        self.contact: DirectContact | None = None
        """What our presence announces once open."""
        self.server: LinkServer | None = None
        """The serving side, while open (None when this device asks only)."""
        self.client = LinkClient(node, network, self.limits, self.supervisor)
        """The asking side: links to holders, and which holders failed us lately."""
        node.membership.on_revoked.append(self._revoked)

    @property
    def received(self) -> Counter[str]:
        """Bytes received directly, by peer (what did not cross the broker)."""
        return self.client.received

    @property
    def links(self) -> dict[str, Link]:
        """Links this device made, by holder."""
        return self.client.links

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not DirectState.UNOPENED:
            raise RuntimeError(f"these direct links are {self.state.value}; make new ones")
        if self.host is None or self.serve is None:
            self.state = DirectState.OPEN
            return self
        cert_pem, key_pem = self_signed(self.node.device_id)
        sha256 = fingerprint(cert_pem)
        context = server_context(cert_pem, key_pem)
        # Plain TCP first: a connection is counted (and refused past the bounds) before any TLS work.
        listener = await listen(self.host, self.port)
        port = listener.getsockname()[1]
        self.contact = DirectContact(hosts=[self.host], port=port, tls_sha256=sha256)
        self.server = LinkServer(
            self.node, self.serve, listener, context, sha256, self.limits, self.supervisor
        )
        self.state = DirectState.OPEN
        self.server.start()
        log.info("direct links on %s:%d", self.host, port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self.state is DirectState.CLOSED:
            return
        self.state = DirectState.CLOSED
        with contextlib.suppress(ValueError):
            self.node.membership.on_revoked.remove(self._revoked)
        tasks = self.client.close()
        for task in tasks:
            task.cancel()
        if self.server is not None:
            tasks += self.server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close_listener()

    def _revoked(self, devices: frozenset[str]) -> None:
        self.client.revoked(devices)
        if self.server is not None:
            self.server.revoked(devices)

    # -- asking ---------------------------------------------------------------------------------------

    def reachable(self, device_id: str, contact: DirectContact | None) -> bool:
        """Worth trying directly: it announces a contact with a host we may try (`usable_hosts`), and
        has not failed us lately."""
        if contact is None or self.state is not DirectState.OPEN:
            return False
        return self.client.reachable(device_id, contact)

    async def ask(
        self, device_id: str, contact: DirectContact, ask: Ask, *, max_length: int, timeout: float = 10.0
    ) -> bytes:
        """``ask``'s answer from ``device_id`` (at most ``max_length`` bytes), over a link made on first
        use. Raises DirectRefusedError if the peer said no, DirectLinkError if the link could not be
        made or broke (then use the broker)."""
        return await self.client.ask(device_id, contact, ask, max_length, timeout)

    # -- as a message path (mesh.interfaces.MessagePath) -----------------------------------------------

    def carry(self, events: LinkEvents | None) -> None:
        """Hand the messages links carry to ``events`` (the endpoint); None: stop."""
        self.client.events = events
        if self.server is not None:
            self.server.events = events

    def carries(self, device_id: str, contact: DirectContact | None) -> bool:
        """Messages to ``device_id`` may go directly: a link with it is up (whichever side made it), or
        its contact is worth trying (`reachable`)."""
        if self.state is not DirectState.OPEN or self.client.events is None:
            return False
        if self.client.live(device_id, contact) is not None:
            return True
        if self.server is not None and self.server.writer_to(device_id) is not None:
            return True
        return contact is not None and self.client.reachable(device_id, contact)

    async def send_message(
        self,
        device_id: str,
        contact: DirectContact | None,
        channel: Channel,
        payload: bytes,
        *,
        session: str = "",
    ) -> None:
        """One message to ``device_id`` on a link with it (made now if need be; a link is with one run,
        so ``session`` is not needed). Raises DirectLinkError (the caller sends it through the broker
        instead)."""
        served = self.client.live(device_id, contact) is None and self.server is not None
        if served and self.server is not None and await self.server.send_message(device_id, channel, payload):
            return
        if contact is None:
            raise DirectLinkError(f"{device_id[:8]} announces no direct contact")
        await self.client.send_message(device_id, contact, channel, payload)

    def give_up_on(self, device_id: str) -> None:
        """A stream on the link with ``device_id`` went silent: close the link, use the broker for a
        while (the client side's back-off)."""
        self.client.give_up_on(device_id)
        if self.server is not None:
            self.server.revoked(frozenset({device_id}))  # closes the links it made to us, nothing more

    # -- as a bulk path (mesh.interfaces.BulkPath) ------------------------------------------------------

    def reaches(self, peer: Peer) -> bool:
        return self.reachable(peer.device_id, peer.presence.direct)

    async def fetch(
        self, peer: Peer, piece: Piece, *, timeout: float, sent: asyncio.Event | None = None
    ) -> bytes:
        if sent is not None:  # a link's own TCP flow control paces its asks
            sent.set()
        contact = peer.presence.direct
        if contact is None:
            raise DirectLinkError(f"{peer.device_id[:8]} announces no direct contact")
        ask = Ask(id=secrets.randbits(62), content_id=piece.resource, index=piece.index)
        return await self.ask(peer.device_id, contact, ask, max_length=piece.max_length, timeout=timeout)
