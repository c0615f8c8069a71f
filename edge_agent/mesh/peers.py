"""Who is out there: the peers whose signed presence we hold, how far away and how busy they are."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import Offer, Presence
from edge_agent.tasks import Task

AGE_OUT_INTERVALS = 3.0
"""A peer silent for this many of its own presence intervals is considered gone."""


@dataclass
class Peer:
    certificate: DeviceCertificate
    presence: Presence
    seen: float
    rtt_ms: float | None = None
    banned_until: float = 0.0
    failures: int = 0
    max_interval_s: float = 60.0
    """Whatever interval the peer declares, it is believed alive for at most 3 of these."""
    throughput: float | None = None
    """Work units per second this device measured from the peer's real answers (EWMA); trusted over
    the rate the peer claims."""

    device_id: str = field(init=False)
    """This and the next three are copied from the certificate and advert whenever they change (plain
    attributes, not properties: the router and the exchanges read them on every request)."""
    name: str = field(init=False)
    device_class: str = field(init=False)
    session: str = field(init=False)

    def __post_init__(self) -> None:
        self.heard(self.certificate, self.presence, self.seen)

    def heard(self, certificate: DeviceCertificate, presence: Presence, now: float) -> None:
        """A newer verified advert (with the certificate it was checked against) arrived at ``now``."""
        self.certificate, self.presence, self.seen = certificate, presence, now
        self.device_id, self.name = certificate.device_id, certificate.name
        self.device_class, self.session = certificate.device_class, presence.session

    def alive(self, now: float) -> bool:
        return now - self.seen <= AGE_OUT_INTERVALS * min(self.presence.interval_s, self.max_interval_s)

    def banned(self, now: float) -> bool:
        return now < self.banned_until

    def offer(self, task: Task) -> Offer | None:
        """What the peer offers for ``task``, if its certificate also allows it to serve that task."""
        if task not in self.certificate.serves:
            return None
        return next((o for o in self.presence.offers if o.task == task), None)


class PeerTable:
    def __init__(self, own_id: str, *, max_peers: int = 256, max_interval_s: float = 60.0) -> None:
        self.own_id = own_id
        self.max_peers = max_peers
        self.max_interval_s = max_interval_s
        self._peers: dict[str, Peer] = {}

    def update(
        self, certificate: DeviceCertificate, presence: Presence, now: float | None = None
    ) -> Peer | None:
        """Record a verified advert; None if the table is full of other live peers."""
        now = time.monotonic() if now is None else now
        peer = self._peers.get(certificate.device_id)
        if peer is None:
            if len(self._peers) >= self.max_peers:
                self.expire(now)
                if len(self._peers) >= self.max_peers:
                    return None
            peer = self._peers[certificate.device_id] = Peer(
                certificate, presence, now, max_interval_s=self.max_interval_s
            )
        else:
            peer.heard(certificate, presence, now)
        return peer

    def forget(self, device_id: str) -> Peer | None:
        return self._peers.pop(device_id, None)

    def get(self, device_id: str) -> Peer | None:
        return self._peers.get(device_id)

    def expire(self, now: float | None = None) -> list[Peer]:
        """Drop peers that have gone silent; return them."""
        now = time.monotonic() if now is None else now
        gone = [p for p in self._peers.values() if not p.alive(now)]
        for p in gone:
            del self._peers[p.device_id]
        return gone

    def all(self) -> list[Peer]:
        return sorted(self._peers.values(), key=lambda p: p.name)

    def ban(self, device_id: str, seconds: float, now: float | None = None) -> None:
        """Skip a peer that just failed us, for a while growing with repeated failures (Petals-style)."""
        peer = self._peers.get(device_id)
        if peer is not None:
            now = time.monotonic() if now is None else now
            peer.failures += 1
            peer.banned_until = now + seconds * min(8, 2 ** (peer.failures - 1))

    def succeeded(self, device_id: str, units: int = 0, seconds: float = 0.0) -> None:
        """A peer answered: clear its failures and fold the measured throughput into its estimate."""
        peer = self._peers.get(device_id)
        if peer is not None:
            peer.failures = 0
            if units > 0 and seconds > 0:
                rate = units / seconds
                peer.throughput = rate if peer.throughput is None else 0.7 * peer.throughput + 0.3 * rate
