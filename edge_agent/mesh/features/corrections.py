"""Shared corrections over the mesh: a new record is pushed to every live member at once, and any
device that missed some (off, or joined later) catches up by anti-entropy: presence carries a digest
of the records held; a device hearing a different digest asks that peer for what it lacks.

Every record arriving is checked before it is stored (`Corrections.check`: a member that may correct
signed it). A push is a user making a correction: it comes from a device that may correct, carries only
that device's own records, at most `PUSH_RECORDS` of them, and at most `PUSHED_RECORDS` per
`PUSH_WINDOW_S` per device; anything else is dropped before a signature is verified. Queries and
answers are bounded per peer in rate and size; refusals are counted and logged, never stored.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

from edge_agent.errors import HearthError, RecipientNotMemberError, SessionError, TransportError
from edge_agent.mesh.corrections import Correction, CorrectionError, Corrections, make_correction
from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import CorrectionsData, CorrectionsQuery

__all__ = ["CorrectionSync"]

log = logging.getLogger(__name__)

ASK_EVERY_S = 5.0
"""At most one catch-up query per peer this often (digests differ until both sides merged)."""
ANSWER_EVERY_S = 1.0
REPLY_CHARS = 200_000
PUSH_RECORDS = 4
"""Records in one unasked push (one is made per correction; a few leave room for a short backlog)."""
PUSHED_RECORDS, PUSH_WINDOW_S = 30, 60.0
"""Records a device may push per window: a user correcting by hand makes far fewer."""
_PUSH_REFUSALS = {
    "CorrectionsPushForbidden": "its certificate does not allow correcting",
    "CorrectionsPushMalformed": f"more than {PUSH_RECORDS} records, or records another device made",
    "CorrectionsPushFlood": f"more than {PUSHED_RECORDS} records pushed in {PUSH_WINDOW_S:g} s",
}


class CorrectionSync:
    def __init__(self, endpoint: FeaturePort, corrections: Corrections) -> None:
        self.endpoint = endpoint
        self.corrections = corrections
        self._asked: dict[str, float] = {}
        self._answered: dict[str, float] = {}
        self._queries: dict[int, str] = {}
        self._pushes: dict[str, tuple[float, int]] = {}
        self._warned: dict[tuple[str, str], float] = {}
        endpoint.register(CorrectionsQuery, self._answer)
        endpoint.register(CorrectionsData, self._data)
        self.unwatch = endpoint.watch_presence(self._heard)
        endpoint.contribute_presence(self._presence_fields)
        endpoint.node.membership.on_revoked.append(self._forget_revoked)

    # -- authoring ------------------------------------------------------------------------------------

    async def correct(self, pair: str, source: str, target: str, model: str = "") -> Correction:
        """Record this device's user's correction and share it with the household."""
        node = self.endpoint.node
        record = make_correction(node.identity.signing_key, node.device_id, pair, source, target, model=model)
        return await self._publish(record)

    async def withdraw(self, record_id: str) -> Correction:
        """Take back a correction on every device (a device that may correct may take back any)."""
        target = self.corrections.records.get(record_id)
        if target is None or target.kind != "correction":
            raise CorrectionError(f"no correction {record_id} here (`hearth corrections list` shows them)")
        node = self.endpoint.node
        me = node.membership.member(node.device_id)
        if not me.corrects:
            raise CorrectionError(
                f"{me.name} may not withdraw corrections for the household (only a device the hub approved "
                "to correct, or an admin); `hearth corrections withdraw ID --here` declines it for this "
                "device's own translations"
            )
        record = make_correction(node.identity.signing_key, node.device_id, target.pair, target.source, "",
                                 model=target.model, withdraws=record_id)  # fmt: skip
        return await self._publish(record)

    def decline(self, record_id: str) -> Correction:
        """Stop using a correction for this device's own translations; nothing is sent (any member)."""
        return self.corrections.decline(record_id)

    async def _publish(self, record: Correction) -> Correction:
        self.corrections.check(record)  # this device, too, must be allowed to correct
        self.corrections.add(record)
        self.corrections.save()
        now = time.monotonic()
        push = CorrectionsData(nonce=0, records=[record])
        for peer in self.endpoint.peers.all():
            if peer.alive(now):
                with contextlib.suppress(TransportError, RecipientNotMemberError, SessionError):
                    await self.endpoint.send(peer.device_id, Channel.REQUESTS, push, session=peer.session)
        with contextlib.suppress(HearthError):  # the new digest: devices that missed the push catch up
            await self.endpoint.republish_presence()
        return record

    def _presence_fields(self) -> dict[str, str | None]:
        """The digest of the records held, in this device's advert (peers that differ ask)."""
        return {"corrections": self.corrections.digest if self.corrections.records else None}

    # -- catching up ----------------------------------------------------------------------------------

    def _heard(self, opened: Opened) -> None:
        sender = opened.header.sender
        peer = self.endpoint.peers.get(sender)
        if peer is None or peer.presence.corrections in (None, self.corrections.digest):
            return
        now = time.monotonic()
        if now - self._asked.get(sender, -ASK_EVERY_S) < ASK_EVERY_S:
            return
        if len(self._asked) >= self.endpoint.limits.max_peers:
            self._asked = {d: t for d, t in self._asked.items() if now - t < ASK_EVERY_S}
        self._asked[sender] = now
        nonce = secrets.randbits(62)
        if len(self._queries) >= 64:
            self._queries.pop(next(iter(self._queries)))
        self._queries[nonce] = sender
        query = CorrectionsQuery(nonce=nonce, reply_session=self.endpoint.node.session,
                                 have=sorted(self.corrections.records)[:4096])  # fmt: skip
        self.endpoint.spawn(self._ask(sender, query, peer.session))

    async def _ask(self, device_id: str, query: CorrectionsQuery, session: str) -> None:
        with contextlib.suppress(TransportError, RecipientNotMemberError, HearthError):
            await self.endpoint.send(device_id, Channel.REQUESTS, query, session=session)

    def _answer(self, requester: DeviceCertificate, query: CorrectionsQuery) -> None:
        if "translate" not in requester.requests:
            self.endpoint.dropped["Forbidden"] += 1
            return
        now = time.monotonic()
        if now - self._answered.get(requester.device_id, -ANSWER_EVERY_S) < ANSWER_EVERY_S:
            self.endpoint.dropped["CorrectionsQueryFlood"] += 1
            return
        if len(self._answered) >= self.endpoint.limits.max_peers:
            self._answered.clear()
        self._answered[requester.device_id] = now
        have = set(query.have)
        records: list[Correction] = []
        size = 0
        for record in sorted(self.corrections.records.values(), key=lambda r: -r.created):
            if record.id in have:
                continue
            size += len(record.source) + len(record.target) + 400
            if size > REPLY_CHARS or len(records) >= 256:
                break
            records.append(record)
        reply = CorrectionsData(nonce=query.nonce, records=records)
        self.endpoint.send_soon(requester.device_id, Channel.RESPONSES, reply, session=query.reply_session)

    def _data(self, sender: DeviceCertificate, msg: CorrectionsData) -> None:
        if msg.nonce and self._queries.pop(msg.nonce, None) != sender.device_id:
            self.endpoint.dropped["UnaskedCorrections"] += 1
            return
        if not msg.nonce and (why := self._refuse_push(sender, msg)) is not None:
            self.endpoint.dropped[why] += 1
            self._warn(sender, why)
            return
        added, refused = self.corrections.merge(msg.records)
        if refused:
            self.endpoint.dropped["CorrectionRefused"] += len(refused)
            log.warning("refused %d correction(s) from %s: %s", len(refused), sender.name, refused[0])
        if added:
            log.info("%d new correction(s) from %s", added, sender.name)

    def _warn(self, sender: DeviceCertificate, why: str) -> None:
        """One line per member and reason per window: a flooding member cannot flood the log too."""
        now, key = time.monotonic(), (sender.device_id, why)
        if now - self._warned.get(key, -PUSH_WINDOW_S) < PUSH_WINDOW_S:
            return
        if len(self._warned) >= 4 * self.endpoint.limits.max_peers:
            self._warned.clear()
        self._warned[key] = now
        log.warning("dropped correction records pushed by %s: %s", sender.name, _PUSH_REFUSALS[why])

    def _refuse_push(self, sender: DeviceCertificate, msg: CorrectionsData) -> str | None:
        """Why an unasked push is dropped whole, unverified (a key of `_PUSH_REFUSALS`), or None."""
        if not sender.corrects:
            return "CorrectionsPushForbidden"
        if len(msg.records) > PUSH_RECORDS or any(r.author != sender.device_id for r in msg.records):
            return "CorrectionsPushMalformed"
        now = time.monotonic()
        start, count = self._pushes.get(sender.device_id, (now, 0))
        if now - start > PUSH_WINDOW_S:
            start, count = now, 0
        if count + len(msg.records) > PUSHED_RECORDS:
            return "CorrectionsPushFlood"
        if len(self._pushes) >= self.endpoint.limits.max_peers and sender.device_id not in self._pushes:
            self._pushes = {d: w for d, w in self._pushes.items() if now - w[0] <= PUSH_WINDOW_S}
        self._pushes[sender.device_id] = (start, count + len(msg.records))
        return None

    def _forget_revoked(self, revoked: frozenset[str]) -> None:
        for device_id in revoked:
            if n := self.corrections.forget_author(device_id):
                log.info("forgot %d correction(s) of revoked device %s", n, device_id[:8])
