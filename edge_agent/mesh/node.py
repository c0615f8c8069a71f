"""A device on the mesh: seals what it sends, opens what it receives, drops and logs what it must refuse."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import PeerError
from edge_agent.mesh import topics
from edge_agent.mesh.envelope import EnvelopeOpener, Opened, seal
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Transport
from edge_agent.mesh.replay import ReplayGuard, SendCounter

log = logging.getLogger(__name__)


@dataclass
class MeshNode:
    identity: DeviceIdentity
    membership: Membership
    transport: Transport
    state_dir: Path
    group_key: bytes = b""
    group_epoch: int = 0
    max_frame: int = 1 << 20
    dropped: Counter[str] = field(default_factory=Counter)
    """Refused frames by reason class, for diagnostics (`hearth peers` will show them)."""

    def __post_init__(self) -> None:
        self.counter = SendCounter(self.state_dir / "send-counter.json")
        self.opener = EnvelopeOpener(
            self.identity,
            self.membership,
            ReplayGuard.load(self.state_dir / "replay.json"),
            {self.group_epoch: self.group_key} if self.group_key else {},
            max_frame=self.max_frame,
        )

    @property
    def household(self) -> str:
        return self.membership.household_id

    async def start(self) -> None:
        await self.transport.subscribe(topics.requests(self.household, self.identity.device_id))
        await self.transport.subscribe(topics.responses(self.household, self.identity.device_id))

    async def send(self, to: DeviceCertificate, topic: str, payload: bytes) -> None:
        frame = seal(self.identity, topic=topic, counter=self.counter.next(), payload=payload, recipient=to)
        await self.transport.publish(topic, frame)

    async def broadcast(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        frame = seal(self.identity, topic=topic, counter=self.counter.next(), payload=payload,
                     group_key=self.group_key, epoch=self.group_epoch)  # fmt: skip
        await self.transport.publish(topic, frame, retain=retain)

    async def receive(self) -> AsyncIterator[Opened]:
        """Verified messages only. Anything else is dropped with a log line naming the reason."""
        async for frame in self.transport.frames():
            if not frame.payload:
                continue  # an emptied retained topic (last will), handled by presence tracking
            try:
                yield self.opener.open(frame.payload, frame.topic)
            except PeerError as exc:
                self.dropped[type(exc).__name__] += 1
                log.warning("dropped frame on %s (%d bytes): %s", frame.topic, len(frame.payload), exc)

    def save_state(self) -> None:
        if self.opener.replay.dirty:
            self.opener.replay.save(self.state_dir / "replay.json")
