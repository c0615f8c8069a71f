"""A device on the mesh: seals what it sends, opens what it receives, drops and logs what it must refuse.

Transport-neutral: it hands sealed frames to whatever `Transport` the endpoint connected, and turns
what the transport reports into verified events. Every outgoing path checks the recipient is still a
member (certificate valid, not revoked) before sealing, so a revoked device receives nothing from us
whatever its broker connection still delivers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_agent.errors import (
    ForgedMessageError,
    MalformedMessageError,
    NotAMemberError,
    PeerError,
    RecipientNotMemberError,
    ReplayError,
    TransportError,
)
from edge_agent.mesh.envelope import EnvelopeOpener, Opened, seal
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Address, Announcement, Channel, Received, Transport, Vanished
from edge_agent.mesh.protocol import Presence
from edge_agent.mesh.replay import ReplayGuard, SendCounter
from edge_agent.mesh.sessions import KIND_DATA, KIND_HANDSHAKE, Sessions, kind_of
from edge_agent.mesh.settings import MeshLimits

log = logging.getLogger(__name__)

_MAX_NAMES = 4096
"""Inbox names kept computed (3 channels of every member, with room to spare)."""

__all__ = ["Announced", "GroupKeys", "MeshNode", "VanishHint"]


@dataclass(frozen=True, slots=True)
class Announced:
    """A verified presence-board frame (advert or departure notice); freshness is the caller's to judge."""

    opened: Opened
    retained: bool


@dataclass(frozen=True, slots=True)
class VanishHint:
    """The transport says ``device`` left, unsigned: worth a check, not a fact."""

    device_id: str


@dataclass
class GroupKeys:
    """The household group key and the keys of past epochs, each past key kept for a grace period
    (members that missed a rotation still use it until rekeyed), then forgotten."""

    key: bytes
    epoch: int
    past: dict[int, tuple[bytes, float]]
    """epoch -> (key, when it was retired, Unix seconds)."""
    grace_s: float = 7 * 86400
    max_past: int = 4

    def all(self) -> dict[int, bytes]:
        keys = {e: k for e, (k, _) in self.past.items()}
        if self.key:
            keys[self.epoch] = self.key
        return keys

    def adopt(self, key: bytes, epoch: int, now: float | None = None) -> bool:
        if epoch <= self.epoch:
            return False
        if self.key:
            self.past[self.epoch] = (self.key, time.time() if now is None else now)
        self.key, self.epoch = key, epoch
        self.prune(now)
        return True

    def prune(self, now: float | None = None) -> list[int]:
        """Forget past keys retired longer ago than the grace period, and all but the newest few."""
        now = time.time() if now is None else now
        gone = [e for e, (_, retired) in self.past.items() if now - retired > self.grace_s]
        newest = sorted(self.past, reverse=True)
        gone += [e for e in newest[self.max_past :] if e not in gone]
        for e in gone:
            del self.past[e]
        return gone


class MeshNode:
    def __init__(
        self,
        identity: DeviceIdentity,
        membership: Membership,
        state_dir: Path,
        *,
        group_keys: GroupKeys,
        limits: MeshLimits | None = None,
    ) -> None:
        self.identity = identity
        self.device_id = identity.device_id
        """This device (an attribute, not a property: the exchanges read it per request)."""
        self.membership = membership
        self.state_dir = state_dir
        self.limits = limits or MeshLimits()
        self.group = group_keys
        self.session = secrets.token_hex(8)
        """Random per start: direct messages to us are sealed for it (see protocol.py)."""
        self.transport: Transport | None = None
        self._sealed_for: dict[Address, str] = {}
        """Our inboxes' names as envelopes must bind them (computed once: every frame checks one)."""
        self._names: dict[Address, str] = {}
        """Members' inbox names, each computed once (every send seals for one); bounded by the
        household's size, cleared past `_MAX_NAMES` (revoked members' entries)."""
        self.dropped: Counter[str] = Counter()
        """Refused frames by reason class, for diagnostics (`hearth peers` shows them)."""
        self.counter = SendCounter(state_dir / "send-counter.json")
        self.opener = EnvelopeOpener(
            identity,
            membership,
            ReplayGuard.load(state_dir / "replay.json"),
            group_keys.all(),
            max_frame=self.limits.max_frame_bytes,
        )
        # Presence is state, not a command: its window lives in memory, so after a restart a retained
        # advert (fresh, since peers re-publish every few seconds) is accepted again.
        self.presence_replay = ReplayGuard()
        self.sessions: Sessions | None = (
            Sessions(
                identity,
                membership,
                self.limits.sessions,
                run=lambda: self.session,
                send_frame=self._send_handshake,
                max_frame=self.limits.max_frame_bytes,
                max_skew_ms=self.opener.max_skew_ms,
            )
            if self.limits.sessions.enabled
            else None
        )
        """Forward-secret sessions (envelope v2) with peers that speak them; None: v1 only."""

    @property
    def household(self) -> str:
        return self.membership.household_id

    @property
    def group_epoch(self) -> int:
        return self.group.epoch

    @property
    def group_key(self) -> bytes:
        return self.group.key

    def use_group_key(self, key: bytes, epoch: int) -> bool:
        """Adopt a newer household group key (after a revocation); False if ``epoch`` is not newer."""
        if not self.group.adopt(key, epoch):
            return False
        self.opener.group_keys = self.group.all()
        return True

    def prune_group_keys(self) -> None:
        if self.group.prune():
            self.opener.group_keys = self.group.all()

    def address(self, device: str, channel: Channel) -> Address:
        return Address(self.household, device, channel)

    # -- sending ---------------------------------------------------------------------------------------

    def _link(self) -> Transport:
        if self.transport is None:
            raise TransportError("not connected")
        return self.transport

    def recipient(self, device_id: str) -> DeviceCertificate:
        """The current certificate of ``device_id``, or RecipientNotMemberError: checked on every send."""
        try:
            return self.membership.member(device_id)
        except NotAMemberError as exc:
            raise RecipientNotMemberError(f"not sending to {device_id[:8]}: {exc}") from None

    async def send(self, to: str, channel: Channel, payload: bytes, *, session: str) -> None:
        """Seal ``payload`` for one member's inbox and current ``session`` (its run), and send it: on a
        forward-secret session when the member speaks v2 (after a handshake, the first time), else in
        a v1 envelope. Raises RecipientNotMemberError, TransportError, SessionError."""
        cert = self.recipient(to)
        address = self.address(to, channel)
        name = self._names.get(address)
        if name is None:
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()
            name = self._names[address] = str(address)
        sessions = self.sessions
        if sessions is not None and to in sessions.speakers:
            link = self._link()  # no handshake while our own link is down
            await link.send(address, await sessions.seal(cert, session, name, payload))
            return
        frame = seal(
            self.identity,
            topic=f"{name}#{session}",
            counter=self.counter.next(),
            payload=payload,
            recipient=cert,
        )
        await self._link().send(address, frame)

    async def _send_handshake(self, to: str, frame: bytes) -> None:
        self.recipient(to)
        await self._link().send(self.address(to, Channel.REQUESTS), frame)

    def seal_announcement(self, payload: bytes) -> bytes:
        board = self.address(self.device_id, Channel.PRESENCE)
        return seal(
            self.identity,
            topic=str(board),
            counter=self.counter.next(),
            payload=payload,
            group_key=self.group.key,
            epoch=self.group.epoch,
        )

    async def announce(self, payload: bytes) -> None:
        await self._link().announce(self.seal_announcement(payload))

    # -- receiving -------------------------------------------------------------------------------------

    def _introduce(self, payload: bytes) -> None:
        """Learn a sender's certificate (and newer CRL) from the presence advert it signed."""
        try:
            presence = Presence.model_validate_json(payload)
        except ValidationError as exc:
            raise MalformedMessageError(f"presence from an unknown sender is not valid: {exc}") from None
        if presence.crl is not None:
            self.membership.apply_revocations(presence.crl)
        self.membership.add_certificate(presence.certificate)

    def _unexpected(
        self, exc: Exception, where: str, report: Callable[[Exception, str], None] | None
    ) -> None:
        self.dropped[type(exc).__name__] += 1
        if report is not None:
            report(exc, where)
        else:
            log.warning("dropped frame on %s: unexpected %s: %s", where, type(exc).__name__, exc)

    def _drop(self, exc: PeerError | str, where: str, size: int) -> None:
        name = exc if isinstance(exc, str) else type(exc).__name__
        self.dropped[name] += 1
        log.warning("dropped frame on %s (%d bytes): %s", where, size, exc)

    async def receive(
        self, transport: Transport, unexpected: Callable[[Exception, str], None] | None = None
    ) -> AsyncGenerator[Opened | Announced | VanishHint, None]:
        """Verified messages, announcements and hints only. Anything else is dropped with a log line.

        A check that fails with anything but a PeerError is a bug a peer can trigger: that frame is
        dropped too (counted as its error's name, and handed to ``unexpected`` for the health view),
        and the stream of frames goes on."""
        async for item in transport.incoming():
            if isinstance(item, Vanished):
                if item.device != self.device_id:
                    yield VanishHint(item.device)
                continue
            if isinstance(item, Received):
                if item.retained:
                    self._drop("RetainedInbox", str(item.address), len(item.frame))
                    continue
                try:
                    opened_direct = await self._open_direct(item)
                    if opened_direct is None:
                        continue
                except PeerError as exc:
                    self._drop(exc, str(item.address), len(item.frame))
                    continue
                except Exception as exc:
                    self._unexpected(exc, str(item.address), unexpected)
                    continue
                yield opened_direct
                continue
            assert isinstance(item, Announcement)
            board = self.address(item.device, Channel.PRESENCE)
            try:
                opened = self.opener.open(
                    item.frame, str(board), introduce=self._introduce, announcement=True
                )
                if opened.header.sender != item.device:
                    raise MalformedMessageError(
                        f"presence of {opened.header.sender} on the board of {item.device}"
                    )
            except PeerError as exc:
                if item.retained and isinstance(exc, ReplayError):
                    continue
                self._drop(exc, str(board), len(item.frame))
                continue
            except Exception as exc:
                self._unexpected(exc, str(board), unexpected)
                continue
            yield Announced(opened, item.retained)

    async def _open_direct(self, item: Received) -> Opened | None:
        """A direct frame verified and opened (None: a handshake frame, taken by the session layer)."""
        kind = kind_of(item.frame)
        sessions = self.sessions
        if kind is not None and sessions is not None:
            if kind == KIND_DATA:
                return sessions.open(item.frame, str(item.address))
            if kind == KIND_HANDSHAKE:
                try:
                    await sessions.handshake(item.frame)
                except TransportError as exc:
                    log.debug("could not answer a session handshake: %s", exc)
                return None
            raise MalformedMessageError(f"unknown envelope v2 kind {kind}")
        if sessions is not None and (claimed := item.frame[4:20].hex()) in sessions.speakers:
            # Before any check that would commit state: whoever sent it, it is refused.
            raise ForgedMessageError(
                f"a v1 envelope claiming to be from {claimed}, which speaks forward-secret sessions "
                "(a downgrade): refused"
            )
        sealed_for = self._sealed_for.get(item.address)
        if sealed_for is None:
            sealed_for = self._sealed_for[item.address] = f"{item.address}#{self.session}"
        return self.opener.open(item.frame, sealed_for)

    def prune_sessions(self) -> None:
        if self.sessions is not None:
            self.sessions.prune()

    def save_state(self) -> None:
        if self.opener.replay.dirty:
            self.opener.replay.save(self.state_dir / "replay.json")
