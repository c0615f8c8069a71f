"""A household member that serves nothing and needs no engines: Home Assistant, a phone app, a script.

It connects with the membership saved at pairing, advertises itself (no offers) so peers know its
certificate and see it live, and exposes the endpoint (peers, streams, features) to its owner. Built
from the mesh library alone: no onnxruntime, no agent config.

Like the agent, a member holds its state directory's `StateLock` from construction until it closes: two
processes (two Home Assistants restored from one backup, Home Assistant and a `hearth` command) on one
directory would reuse its message counters, and peers would refuse their messages as replays.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from edge_agent.errors import HearthError, PeerOfflineError, StateInUseError
from edge_agent.mesh.assembly import Features, MemberKeys, build_member, health_of
from edge_agent.mesh.broker_pki import BrokerPki
from edge_agent.mesh.corrections import Corrections
from edge_agent.mesh.features.corrections import CorrectionSync
from edge_agent.mesh.files import StateLock
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import Health, Presence, UpdateApproval, UpdateStatus
from edge_agent.mesh.settings import MeshSettings, broker_host_port
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import MqttConnector
from edge_agent.supervision import Supervisor

__all__ = ["MemberState", "MeshMember"]


class MemberState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class MeshMember:
    """Async context manager: open = connected to the household's broker as this member. Holds the
    state directory from construction: `close` (or leaving the context) gives it back.

    Raises StateInUseError if another process (or another member in this one) holds the directory."""

    def __init__(
        self,
        state_dir: Path,
        broker: str,
        *,
        settings: MeshSettings | None = None,
        connect_timeout_s: float = 10.0,
        supervisor: Supervisor | None = None,
        corrections: Path | None = None,
        update_status: Callable[[], list[UpdateStatus]] | None = None,
    ) -> None:
        """``corrections``: keep the household's shared corrections in this file and take part in their
        sync (announced in presence from the first advert). ``update_status``: the model-update rows this
        member reports in presence (a member that keeps packs of its own)."""
        self.state = HouseholdState(state_dir)
        self._lock = StateLock(self.state.dir)
        try:
            self._lock.acquire()
        except StateInUseError:
            raise StateInUseError(
                f"{self.state.dir} is in use by another Hearth process (another Home Assistant, or a "
                "`hearth` agent or command on this state): one process per membership, or both would "
                "reuse its message counters and peers would refuse them as replays"
            ) from None
        try:
            self._build(broker, settings, connect_timeout_s, supervisor, corrections)
        except BaseException:
            self._lock.release()
            raise
        self._update_status = update_status

    def _build(
        self,
        broker: str,
        settings: MeshSettings | None,
        connect_timeout_s: float,
        supervisor: Supervisor | None,
        corrections: Path | None,
    ) -> None:
        self.broker = broker
        self.settings = settings or MeshSettings()
        self.connect_timeout_s = connect_timeout_s
        self.status = MemberState.UNOPENED
        keys = MemberKeys.load(self.state)
        self.membership, self.certificate = keys.membership, keys.certificate
        host, port = broker_host_port(broker)
        tls = BrokerPki(self.state.dir).tls_context() if broker.startswith("mqtts") else None
        device = self.certificate.device_id
        connector = MqttConnector(host, port, household=self.membership.household_id, device=device,
                                  client_id=f"{device}-{secrets.token_hex(4)}", tls=tls)  # fmt: skip
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        """This member's loops (connection, housekeeping): restarts and drops, announced in presence."""
        kept = Corrections(self.membership.member, corrections) if corrections is not None else None
        parts = build_member(keys, connector, settings=self.settings, supervisor=self.supervisor,
                             presence=self._advert_base, features=Features(corrections=kept))  # fmt: skip
        self.node, self.endpoint = parts.node, parts.endpoint
        self.corrections: CorrectionSync | None = parts.corrections
        """The shared corrections' sync, if this member keeps them (``corrections=``)."""

    def check_member(self) -> None:
        """Raise NotAMemberError if this device's own certificate is revoked or expired (reauth)."""
        self.membership.member(self.certificate.device_id)

    def presence(self) -> Presence:
        """This member's advert as peers get it, with what its features contribute (corrections)."""
        return self.endpoint.advert(self._advert_base())

    def _advert_base(self) -> Presence:
        return Presence(certificate=self.certificate, crl=self.membership.crl, session=self.node.session,
                        link=self.endpoint.link, profile=self.certificate.profile,
                        updates=self._update_status() if self._update_status is not None else [],
                        health=self.health(), interval_s=self.settings.presence_interval_s)  # fmt: skip

    def health(self) -> Health:
        return health_of(self.supervisor)

    def peers(self) -> list[Peer]:
        return self.endpoint.peers.all()

    async def approve_update(self, device_id: str, name: str, sequence: int) -> None:
        """Approve ``name`` at ``sequence`` on a device that waits for approval (its presence says
        "awaiting-approval"); it fetches, verifies and activates it as usual. Only hub-class or admin
        members are listened to. Raises PeerOfflineError if the device is not live, TransportError,
        RecipientNotMemberError."""
        peer = self.endpoint.peers.get(device_id)
        if peer is None or not peer.alive(time.monotonic()):
            raise PeerOfflineError(f"device {device_id[:8]} is not connected to the household now")
        await self.endpoint.send(device_id, Channel.REQUESTS, UpdateApproval(name=name, sequence=sequence),
                                 session=peer.session)  # fmt: skip

    async def __aenter__(self) -> Self:
        if self.status is not MemberState.UNOPENED:
            raise RuntimeError(f"this member is {self.status.value}; make a new one")
        try:
            self.check_member()
        except BaseException:
            await self.close()  # gives the state directory back
            raise
        self.status = MemberState.OPEN
        await self.endpoint.__aenter__()
        try:
            await self.endpoint.wait_connected(self.connect_timeout_s)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self.status is MemberState.CLOSED:
            return
        self.status = MemberState.CLOSED
        try:
            await self.endpoint.close()
            with contextlib.suppress(HearthError, OSError):
                self.state.remember(self.membership)
        finally:
            self._lock.release()
