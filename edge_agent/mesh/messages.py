"""The message layer: one connection loop (a fresh transport from the `Connector` per link,
reconnecting with backoff), decoding each verified message, the wrong-channel checks, and dispatch by
type to the exchange layer, the presence directory, or the feature that registered the type."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from edge_agent.errors import PeerError, TransportError
from edge_agent.mesh.directory import PresenceDirectory
from edge_agent.mesh.envelope import KIND_DIRECT, Opened, PathHeader
from edge_agent.mesh.exchanges import Exchanges
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel, Connector
from edge_agent.mesh.node import Announced, MeshNode, VanishHint
from edge_agent.mesh.protocol import (
    Accepted,
    Cancel,
    Chunk,
    Departure,
    Failure,
    Ping,
    Pong,
    Presence,
    Request,
    decode,
    encode,
)
from edge_agent.mesh.settings import MeshSettings
from edge_agent.supervision import Supervisor

__all__ = ["FeatureHandler", "MessageLayer"]

log = logging.getLogger(__name__)

FeatureHandler = Callable[[DeviceCertificate, Any], None]
"""A feature's handler of one message type: the verified sender's certificate and the message."""


class MessageLayer:
    def __init__(
        self,
        node: MeshNode,
        connector: Connector,
        settings: MeshSettings,
        supervisor: Supervisor,
        connected: asyncio.Event,
        exchanges: Exchanges,
        directory: PresenceDirectory,
        closing: Callable[[], bool],
    ) -> None:
        self.node = node
        self.connector = connector
        self.settings = settings
        self.supervisor = supervisor
        self.connected = connected
        self.exchanges = exchanges
        self.directory = directory
        self.closing = closing
        self.link_changed = asyncio.Event()
        """Set when the broker connection comes up or goes down."""
        self.link = 0
        """Connection number within this session (see protocol.Departure)."""
        self.handlers: dict[type[BaseModel], FeatureHandler] = {}

    @property
    def dropped(self) -> Counter[str]:
        return self.node.dropped

    def departure(self) -> bytes:
        """Our signed-to-be departure notice for the current link."""
        return encode(Departure(session=self.node.session, link=self.link))

    async def connection_loop(self) -> None:
        delay = 0.1
        was_up = True  # the first failure is news; the retries after it are not (one line per outage)
        while not self.closing():
            self.link += 1
            notice = (
                self.node.seal_announcement(self.departure()) if self.directory.presence is not None else None
            )
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
                    if self.directory.presence is not None:
                        await self.directory.publish()
                    self.exchanges.flush_cancels()
                    async for item in self.node.receive(transport, self.unexpected_frame):
                        # Supervisor.guard's contract, spelled out: the supervisor is called only when a
                        # message fails, not entered for every frame.
                        try:
                            self.dispatch(item)
                        except Exception as exc:
                            self.supervisor.drop(
                                "mesh-dispatch", type(exc).__name__, exc, "dropped a message that failed"
                            )
            except TransportError as exc:
                if self.closing():
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
                self.exchanges.link_dropped()
            await asyncio.sleep(delay)
            delay = min(self.settings.reconnect_max_s, delay * 2)

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise TransportError(f"no connection to the mesh within {timeout:g} s") from None

    async def caught_up(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        try:
            await self.wait_connected(timeout)
        except TransportError:
            return False
        transport = self.node.transport
        return transport is not None and await transport.caught_up(max(0.0, end - time.monotonic()))

    # -- what direct links carry (mesh.direct.carrier.LinkEvents) -------------------------------------

    def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
        """A message a link carried from a member it proved: dispatched as one from the broker, with the
        same checks from the decoding on (the link's TLS stands in for the envelope's)."""
        try:
            cert = self.node.membership.member(device_id)
            header = PathHeader(  # every field ours: nothing to validate
                version=2,
                kind=KIND_DIRECT,
                sender=device_id,
                recipient=self.node.device_id,
                counter=1,
                timestamp_ms=int(time.time() * 1000),
                epoch=0,
                topic=str(self.node.address(self.node.device_id, channel)),
            )
            self.dispatch(Opened(header, cert, payload))
        except PeerError as exc:
            self.dropped[type(exc).__name__] += 1
            log.warning("dropped a message on the direct link with %s: %s", device_id[:8], exc)
        except Exception as exc:
            self.supervisor.drop("mesh-dispatch", type(exc).__name__, exc, "dropped a message that failed")

    def link_down(self, device_id: str) -> None:
        self.exchanges.path_down(device_id)

    def unexpected_frame(self, exc: Exception, where: str) -> None:
        """A frame whose checks failed in a way nobody planned for (a bug a peer can trigger): it is
        dropped like a forged one, and counted where the health view shows it."""
        self.supervisor.drop("mesh-frames", type(exc).__name__, exc, f"dropped a frame on {where}")

    def dispatch(self, item: Opened | Announced | VanishHint) -> None:
        if isinstance(item, VanishHint):
            self.directory.vanished(item.device_id)
            return
        if isinstance(item, Announced):
            self.directory.announced(item)
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
        exchanges = self.exchanges
        if isinstance(msg, Request):
            exchanges.accept(item.sender, msg)
        elif isinstance(msg, Cancel):
            exchanges.cancel_served(sender, msg.id)
        elif isinstance(msg, Chunk | Accepted | Failure):
            exchanges.deliver(sender, msg)
        elif isinstance(msg, Ping):
            exchanges.answer_ping(item.sender, msg)
        elif isinstance(msg, Pong):
            exchanges.pong(sender, msg)
        else:
            handler = self.handlers.get(type(msg))
            if handler is None:
                self.dropped["Unhandled"] += 1
                log.info("no feature here handles %s from %s", msg.type, sender[:8])
                return
            handler(item.sender, msg)
