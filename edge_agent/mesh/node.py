"""A device on the mesh: seals what it sends, opens what it receives, drops and logs what it must refuse."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge_agent.errors import MalformedMessageError, PeerError, ReplayError
from edge_agent.mesh import topics
from edge_agent.mesh.envelope import EnvelopeOpener, Opened, seal
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Transport
from edge_agent.mesh.protocol import Presence
from edge_agent.mesh.replay import ReplayGuard, SendCounter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Departed:
    """A peer's presence was emptied (its last will fired, or it left cleanly)."""

    device_id: str


@dataclass
class MeshNode:
    identity: DeviceIdentity
    membership: Membership
    transport: Transport
    state_dir: Path
    group_key: bytes = b""
    group_epoch: int = 0
    past_group_keys: dict[int, bytes] = field(default_factory=dict)
    """Keys of earlier epochs: members that missed a rotation still publish with them for a while."""
    max_frame: int = 1 << 20
    dropped: Counter[str] = field(default_factory=Counter)
    """Refused frames by reason class, for diagnostics (`hearth peers` shows them)."""

    def __post_init__(self) -> None:
        self.counter = SendCounter(self.state_dir / "send-counter.json")
        self.opener = EnvelopeOpener(
            self.identity,
            self.membership,
            ReplayGuard.load(self.state_dir / "replay.json"),
            {**self.past_group_keys, **({self.group_epoch: self.group_key} if self.group_key else {})},
            max_frame=self.max_frame,
        )
        # Presence is state, not a command: its window lives in memory, so after a restart a retained
        # advert (fresh, since peers re-publish every few seconds) is accepted again.
        self.presence_replay = ReplayGuard()

    @property
    def household(self) -> str:
        return self.membership.household_id

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    def use_group_key(self, key: bytes, epoch: int) -> bool:
        """Adopt a newer household group key (after a revocation); False if ``epoch`` is not newer."""
        if epoch <= self.group_epoch:
            return False
        self.past_group_keys[self.group_epoch] = self.group_key
        self.group_key, self.group_epoch = key, epoch
        self.opener.group_keys[epoch] = key
        return True

    async def start(self) -> None:
        await self.transport.subscribe(topics.requests(self.household, self.device_id))
        await self.transport.subscribe(topics.responses(self.household, self.device_id))
        await self.transport.subscribe(topics.all_presence(self.household))

    async def send(self, to: DeviceCertificate, topic: str, payload: bytes) -> None:
        frame = seal(self.identity, topic=topic, counter=self.counter.next(), payload=payload, recipient=to)
        await self.transport.publish(topic, frame)

    async def broadcast(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        frame = seal(self.identity, topic=topic, counter=self.counter.next(), payload=payload,
                     group_key=self.group_key, epoch=self.group_epoch)  # fmt: skip
        await self.transport.publish(topic, frame, retain=retain)

    def _introduce(self, payload: bytes) -> None:
        """Learn a sender's certificate (and newer CRL) from the presence advert it signed."""
        try:
            presence = Presence.model_validate_json(payload)
        except ValidationError as exc:
            raise MalformedMessageError(f"presence from an unknown sender is not valid: {exc}") from None
        if presence.crl is not None:
            self.membership.apply_revocations(presence.crl)
        self.membership.add_certificate(presence.certificate)

    async def receive(self) -> AsyncIterator[Opened | Departed]:
        """Verified messages and departures only. Anything else is dropped with a log line saying why."""
        async for frame in self.transport.frames():
            presence_of = topics.presence_device(frame.topic)
            if not frame.payload:
                if presence_of and presence_of != self.device_id:
                    yield Departed(presence_of)
                continue
            try:
                if presence_of is not None:
                    opened = self.opener.open(
                        frame.payload, frame.topic, introduce=self._introduce, replay=self.presence_replay
                    )
                    if opened.header.sender != presence_of:
                        raise MalformedMessageError(
                            f"presence of {opened.header.sender} on the topic of {presence_of}"
                        )
                else:
                    opened = self.opener.open(frame.payload, frame.topic)
            except PeerError as exc:
                if frame.retained and isinstance(exc, ReplayError):
                    log.debug("retained frame on %s seen before", frame.topic)
                    continue
                self.dropped[type(exc).__name__] += 1
                log.warning("dropped frame on %s (%d bytes): %s", frame.topic, len(frame.payload), exc)
                continue
            yield opened

    def save_state(self) -> None:
        if self.opener.replay.dirty:
            self.opener.replay.save(self.state_dir / "replay.json")
