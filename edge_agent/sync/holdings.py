"""Which member holds which update: the holdings answer cut to the wire, and discovery (ask every live
member, merge the parts of each answer, verify every manifest offered).

What arrives is checked before use: holdings' manifests go through `TrustedUpdates` (threshold,
expiry, class, sequence) and a newer root-signed key set is adopted. A claim that does not verify is
only ever shown (status, presence), never acted on. The exchange (`sync.exchange`) serves chunks and
fetches; this module says what we hold and finds out what the others hold.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import (
    RecipientNotMemberError,
    RollbackError,
    SessionError,
    TransportError,
    UpdateError,
    WrongDeviceClassError,
)
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import MAX_COUNT, HeldUpdate, UpdateHoldings, UpdateQuery, encode
from edge_agent.supervision import Supervisor
from edge_agent.sync.limits import MAX_MANIFEST_ENVELOPE_BYTES, UPDATE_PAYLOAD_BYTES
from edge_agent.sync.manifest import MANIFEST_TYPE, NAME_PATTERN, UpdateManifest
from edge_agent.sync.signing import open_envelope
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.swarm import decode_bitfield, encode_bitfield
from edge_agent.sync.trust import TrustedUpdates
from edge_agent.tasks import DeviceClass

__all__ = [
    "MAX_HOLDINGS", "Found", "Holding", "HoldingsDiscovery", "UnverifiedClaim", "holdings_answer",
    "holdings_parts",
]  # fmt: skip

log = logging.getLogger(__name__)

MAX_HOLDINGS = 8
MAX_PENDING_QUERIES = 16

Found = dict[str, tuple[UpdateManifest, bytes, dict[str, set[int]]]]
"""Discovered updates: content id -> (verified manifest, its envelope, which peer holds which chunks)."""


@dataclass
class _Query:
    asked: set[str]
    replies: dict[str, UpdateHoldings] = field(default_factory=dict)
    """Per peer, its answer (the parts it sent so far, merged)."""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class UnverifiedClaim(BaseModel):
    """What an unverified manifest claims (name, sequence): shown in status, so held to the same
    rules as a verified one's, or not kept at all."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(pattern=NAME_PATTERN)
    sequence: int = Field(ge=1, le=MAX_COUNT)


def holdings_parts(nonce: int, key_set: str | None, held: list[HeldUpdate]) -> list[UpdateHoldings]:
    """An answer to a holdings query, cut into parts that each fit one update payload (the key set
    and every valid manifest fit one by construction: sync.limits); all but the last say ``more``."""
    parts: list[UpdateHoldings] = []
    current: list[HeldUpdate] = []
    pending_key_set = key_set

    def size(items: list[HeldUpdate]) -> int:
        return len(encode(UpdateHoldings(nonce=nonce, key_set=pending_key_set, held=items, more=True)))

    for item in held:
        if (current or pending_key_set is not None) and size([*current, item]) > UPDATE_PAYLOAD_BYTES:
            parts.append(UpdateHoldings(nonce=nonce, key_set=pending_key_set, held=current, more=True))
            current, pending_key_set = [], None
        current.append(item)
    parts.append(UpdateHoldings(nonce=nonce, key_set=pending_key_set, held=current))
    return parts


@dataclass
class Holding:
    """A pack we can serve chunks of: its verified manifest, where its files are, which chunks we have."""

    manifest: UpdateManifest
    envelope: bytes
    directory: Path
    have: set[int]


def holdings_answer(
    nonce: int, store: UpdateStore, holdings: Iterable[Holding], supervisor: Supervisor
) -> list[UpdateHoldings]:
    """What we hold (and our key set), as the parts of one answer to a holdings query."""
    key_set = store.key_set_path.read_bytes() if store.key_set_path.exists() else None
    held: list[HeldUpdate] = []
    for h in holdings:
        try:  # every envelope held was opened within the size bounds; a bug here skips one
            held.append(
                HeldUpdate(
                    manifest=base64.b64encode(h.envelope).decode(),
                    have=encode_bitfield(h.have, len(h.manifest.chunks)),
                )
            )
        except ValidationError as exc:
            supervisor.drop("model-updates", "UnsendableHolding", exc, "left a holding out")
    try:
        text = base64.b64encode(key_set).decode() if key_set else None
        parts = holdings_parts(nonce, text, held)
    except ValidationError as exc:  # a key set file over its bound: answer without it
        supervisor.drop("model-updates", "UnsendableKeySet", exc, "left the key set out")
        parts = holdings_parts(nonce, None, held)
    return parts


class HoldingsDiscovery:
    """Asks what members hold and keeps what it learnt: the unverifiable claims (shown, never acted
    on) and a newer key set (adopted into ``trusted`` and saved to ``store``)."""

    def __init__(
        self,
        endpoint: FeaturePort,
        store: UpdateStore,
        trusted: TrustedUpdates,
        device_class: DeviceClass,
        supervisor: Supervisor,
    ) -> None:
        self.endpoint = endpoint
        self.store = store
        self.trusted = trusted
        self.device_class = device_class
        self.supervisor = supervisor
        self._queries: dict[int, _Query] = {}
        self.unverifiable: dict[str, tuple[int, str]] = {}
        """Model name -> (claimed sequence, why it did not verify)."""
        endpoint.register(UpdateHoldings, self._holdings)

    def _holdings(self, sender: DeviceCertificate, msg: UpdateHoldings) -> None:
        """One part of a peer's answer: merged with its earlier parts (at most MAX_HOLDINGS manifests
        and one key set per peer); the peer has answered when a part says no ``more``."""
        query = self._queries.get(msg.nonce)
        if query is None or sender.device_id not in query.asked:
            return
        earlier = query.replies.get(sender.device_id)
        if earlier is not None:
            held = [*earlier.held, *msg.held][:MAX_HOLDINGS]
            msg = msg.model_copy(update={"key_set": earlier.key_set or msg.key_set, "held": held})
        query.replies[sender.device_id] = msg
        if not msg.more or len(msg.held) >= MAX_HOLDINGS:
            query.asked.discard(sender.device_id)
        if not query.asked:
            query.done.set()

    async def discover(self, timeout: float = 2.0) -> Found:
        """Ask every live member what it holds. Returns the verified manifests this device may install
        (newer than what it has), with which peer holds which chunks; refusals are logged and counted."""
        endpoint = self.endpoint
        now = time.monotonic()
        peers = [p for p in endpoint.peers.all() if p.alive(now) and endpoint.is_member(p.device_id)]
        if not peers or len(self._queries) >= MAX_PENDING_QUERIES:
            return {}
        nonce = secrets.randbits(62)
        query = self._queries[nonce] = _Query({p.device_id for p in peers})
        try:
            ask = UpdateQuery(nonce=nonce, reply_session=endpoint.node.session)
            for peer in peers:
                with contextlib.suppress(TransportError, RecipientNotMemberError, SessionError):
                    await endpoint.send(peer.device_id, Channel.REQUESTS, ask, session=peer.session)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await query.done.wait()
        finally:
            self._queries.pop(nonce, None)
        found: Found = {}
        for reply in query.replies.values():  # key sets first: any peer may relay the newest one
            if reply.key_set is not None:
                self._adopt_key_set(reply.key_set)
        for device_id, reply in query.replies.items():
            for held in reply.held:
                # One holding that fails in a way nobody planned is dropped (counted); the rest count.
                with self.supervisor.guard("model-updates", f"dropped an update {device_id[:8]} holds"):
                    try:
                        envelope = base64.b64decode(held.manifest, validate=True)
                        manifest = self.trusted.verify_manifest(envelope, self.device_class)
                        have = decode_bitfield(held.have, len(manifest.chunks))
                    except (UpdateError, ValueError) as exc:
                        self.endpoint.dropped[type(exc).__name__] += 1
                        log.info("not fetching an update %s holds: %s", device_id[:8], exc)
                        self._note_unverifiable(held.manifest, exc)
                        continue
                    entry = found.setdefault(manifest.content_id, (manifest, envelope, {}))
                    entry[2][device_id] = have
        return found

    def _note_unverifiable(self, text: str, exc: Exception) -> None:
        """Remember a claimed higher sequence we could not verify (reported in presence and status).
        The claim itself is unverified: it is only ever shown, never acted on, and kept only if its
        name and sequence are ones a verified manifest could carry (anything else would poison every
        table that shows it: issue 21, N1). The newest MAX_HOLDINGS claims are kept."""
        if isinstance(exc, (WrongDeviceClassError, RollbackError)):
            return  # not for us, or not newer: nothing to report
        try:
            payload, _ = open_envelope(
                base64.b64decode(text), MANIFEST_TYPE, max_bytes=MAX_MANIFEST_ENVELOPE_BYTES, what=""
            )
            claim = UnverifiedClaim.model_validate_json(payload)
        except (UpdateError, ValueError):  # pydantic's ValidationError is a ValueError
            self.endpoint.dropped["UnreadableUpdateClaim"] += 1
            return
        if claim.sequence <= self.trusted.installed.get(claim.name, 0):
            return
        self.unverifiable.pop(claim.name, None)
        while len(self.unverifiable) >= MAX_HOLDINGS:
            del self.unverifiable[next(iter(self.unverifiable))]
        self.unverifiable[claim.name] = (claim.sequence, f"{type(exc).__name__}: {exc}"[:300])

    def _adopt_key_set(self, text: str) -> None:
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:
            return
        current = self.trusted.key_set
        try:
            key_set = self.trusted.update_key_set(data)
        except UpdateError as exc:
            if current is None or "not above" not in str(exc):
                log.info("not adopting an update key set: %s", exc)
            return
        self.store.save_key_set(data)
        log.info("adopted update key set version %d", key_set.version)
