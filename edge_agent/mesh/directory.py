"""Presence and the peer directory: this device's advert (with what features contribute), the
adverts, departures and vanish hints of others, and the peer table's upkeep (expiry, certificates
that lapsed, revocations). A peer that goes fails our streams to it and stops our serving it, through
the exchange layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import HearthError, PeerError, TransportError
from edge_agent.mesh.envelope import KIND_GROUP, Opened
from edge_agent.mesh.exchanges import Exchanges
from edge_agent.mesh.lifetime import Lifetime
from edge_agent.mesh.node import Announced, MeshNode
from edge_agent.mesh.peers import PeerTable
from edge_agent.mesh.protocol import Departure, Presence, decode, encode
from edge_agent.mesh.settings import MeshSettings
from edge_agent.supervision import Supervisor

__all__ = ["PresenceDirectory", "PresenceFields", "PresenceHook"]

log = logging.getLogger(__name__)

PresenceHook = Callable[[Opened], None]
"""Called with every verified, fresh advert of a peer."""
PresenceFields = Callable[[], Mapping[str, Any]]
"""A feature's fields of this device's advert (``Presence`` field name -> value), read per advert."""


class PresenceDirectory:
    def __init__(
        self,
        node: MeshNode,
        settings: MeshSettings,
        supervisor: Supervisor,
        lifetime: Lifetime,
        exchanges: Exchanges,
        presence: Callable[[], Presence] | None,
        connected: asyncio.Event,
    ) -> None:
        self.node = node
        self.settings = settings
        self.supervisor = supervisor
        self.lifetime = lifetime
        self.exchanges = exchanges
        self.presence = presence
        """Builds this device's advert; None: a one-shot client that does not advertise."""
        self.connected = connected
        limits = settings.limits
        self.peers = PeerTable(
            node.device_id, max_peers=limits.max_peers, max_interval_s=limits.max_presence_interval_s
        )
        self.changed = asyncio.Event()
        self.hooks: list[PresenceHook] = []
        """Called with every verified, fresh advert (features watch epochs, sessions, ...)."""
        self.contributions: list[PresenceFields] = []
        self.own_presence_seen = False
        self.ignored: Counter[str] = Counter()
        """Harmless frames set aside (an earlier connection's will, fired late by a session takeover)."""
        self._checking: set[str] = set()
        node.membership.on_revoked.append(self.purge_revoked)

    @property
    def dropped(self) -> Counter[str]:
        return self.node.dropped

    # -- our advert -----------------------------------------------------------------------------------

    def advert(self, base: Presence) -> Presence:
        """``base`` with the features' fields; a contribution that fails is left out (and counted)."""
        if self.node.sessions is not None:
            base = base.model_copy(update={"envelopes": [1, 2]})
        for fields in self.contributions:
            with self.supervisor.guard("mesh-presence", "left a feature's fields out of the presence"):
                base = base.model_copy(update=dict(fields()))
        return base

    async def publish(self) -> None:
        """Announce this device's current advert (raises TransportError). If the advert cannot be
        built, that is logged and counted, and nothing is sent: peers keep the last one until it ages."""
        assert self.presence is not None
        advert: bytes | None = None
        with self.supervisor.guard("mesh-presence", "could not build this device's presence"):
            advert = encode(self.advert(self.presence()))
        if advert is not None:
            await self.node.announce(advert)

    # -- others' adverts ------------------------------------------------------------------------------

    def announced(self, item: Announced) -> None:
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
            self.departed(sender, msg)
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
        if sender == self.node.device_id:
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
            self.exchanges.lost(sender, f"{known.name} restarted")
        if (sessions := self.node.sessions) is not None:
            sessions.speaks(sender, 2 in msg.envelopes)
            if known is not None and known.session != msg.session:
                sessions.forget_runs(sender, keep=msg.session)
        if self.peers.update(cert, msg) is None:
            self.dropped["PeerTableFull"] += 1
            return
        self.changed.set()
        for hook in list(self.hooks):  # one feature's failure must not keep the advert from the next
            with self.supervisor.guard("mesh-presence-hooks", "a presence hook failed"):
                hook(opened)

    def departed(self, sender: str, notice: Departure) -> None:
        peer = self.peers.get(sender)
        if peer is None or (peer.session, peer.presence.link) != (notice.session, notice.link):
            # An old notice (an earlier link's will, replayed or late): the device is still here.
            self.ignored["StaleDeparture"] += 1
            log.info("ignored a departure notice of %s for an earlier connection", sender[:8])
            return
        self.forget(sender, f"{peer.name} left the mesh")

    def forget(self, device_id: str, reason: str) -> None:
        """A peer is gone (left, crashed, revoked, expired): fail our streams to it and stop serving it
        (nobody is left to read the answer)."""
        peer = self.peers.forget(device_id)
        if peer is not None:
            log.info("peer %s: %s", peer.name, reason)
            self.changed.set()
        self.exchanges.lost(device_id, reason)
        self.exchanges.stop_serving(device_id, reason)

    def vanished(self, device_id: str) -> None:
        """An unsigned 'gone' (an emptied presence topic): believe it only if the peer stops answering."""
        peer = self.peers.get(device_id)
        if peer is None or device_id in self._checking:
            return
        self._checking.add(device_id)

        async def check() -> None:
            try:
                rtt = await self.exchanges.ping(peer, timeout=self.settings.departure_check_s)
                if rtt is None and self.peers.get(device_id) is peer:
                    self.forget(device_id, f"{peer.name} vanished and does not answer")
                elif rtt is not None:
                    self.dropped["UnconfirmedDeparture"] += 1
                    log.warning("%s was reported gone, but answers: ignored (forged departure?)", peer.name)
            finally:
                self._checking.discard(device_id)

        self.lifetime.spawn(check())

    def purge_revoked(self, revoked: frozenset[str]) -> None:
        """A newer CRL: forget those peers, fail our streams to them, stop serving them."""
        for device_id in revoked:
            self.forget(device_id, "revoked")

    def upkeep(self) -> None:
        """Age out silent peers and forget those whose certificate lapsed since their last advert."""
        for peer in self.peers.expire():
            log.info("peer %s (%s) aged out", peer.name, peer.device_id[:8])
            self.exchanges.lost(peer.device_id, f"{peer.name} went silent (no presence)")
        for device_id in [p.device_id for p in self.peers.all()]:
            try:
                self.node.membership.member(device_id)
            except HearthError as exc:  # expired since its last advert
                self.forget(device_id, f"no longer a member ({exc})")

    async def housekeeping_loop(self) -> None:
        """Every presence interval: upkeep, our advert again, the node's state saved."""
        # Checks closing too: on 3.11 asyncio.wait_for (inside aiomqtt) can swallow a cancel that
        # races with its result, and a loop that only stops on cancel would then run forever.
        # Each step is guarded on its own: one that fails (a peer's entry, our own advert) must not
        # stop the others, or the next round.
        guard = self.supervisor.guard
        while not self.lifetime.closing:
            await asyncio.sleep(self.settings.presence_interval_s)
            with guard("mesh-housekeeping", "peer table upkeep failed"):
                self.upkeep()
            if self.connected.is_set() and self.presence is not None:
                with contextlib.suppress(TransportError):
                    await self.publish()
            with guard("mesh-housekeeping", "saving mesh state failed"):
                self.node.prune_group_keys()
                self.node.prune_sessions()
                self.node.save_state()

    # -- reading the directory ------------------------------------------------------------------------

    def session_of(self, device_id: str) -> str | None:
        peer = self.peers.get(device_id)
        return peer.session if peer is not None else None

    async def wait_changed(self, timeout: float) -> bool:
        self.changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Re-check ``condition`` on every peer-table change until it holds or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while not condition():
            self.changed.clear()
            if (remaining := end - time.monotonic()) <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
        return True

    async def wait_for_presence(self, device_id: str, timeout: float, since: float | None) -> bool:
        after = time.monotonic() if since is None else since

        def heard() -> bool:
            peer = self.peers.get(device_id)
            return peer is not None and peer.seen > after

        return await self.wait_until(heard, timeout)
