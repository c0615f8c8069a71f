"""The shared translation memory over the mesh: ask peers for finished translations, answer theirs.

Queries carry digests salted with a secret of the current group-key epoch; answers carry entries
signed by the members that produced them. An entry counts only if its producer is a current member
whose certificate serves translate, its signature verifies, it is fresh, and it is for exactly the
sentence asked, both when we accept it and when we hand it on. A revocation drops the revoked
device's entries. Who is asked follows the caller's routing policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.errors import HearthError, RecipientNotMemberError, SessionError, TransportError
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.memory import MemoryEntry, TranslationMemory, digest, salt_for
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import MemoryHits, MemoryQuery

log = logging.getLogger(__name__)
MEMORY_REPLY_CHARS = 200_000  # keeps a memory answer far below the envelope's frame limit
MAX_KEYS = 256


@dataclass
class _Waiting:
    asked: set[str]
    entries: list[MemoryEntry] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryExchange:
    def __init__(self, endpoint: FeaturePort, memory: TranslationMemory) -> None:
        self.endpoint = endpoint
        self.memory = memory
        self._waits: dict[int, _Waiting] = {}
        self._salt_epoch = -1
        self._refresh_salt()
        memory.trust = self._trusted
        endpoint.register(MemoryQuery, self._answer)
        endpoint.register(MemoryHits, self._hits)
        endpoint.node.membership.on_revoked.append(self._forget_revoked)
        endpoint.contribute_presence(lambda: {"translation_memory": True})

    def _refresh_salt(self) -> None:
        node = self.endpoint.node
        if node.group_epoch != self._salt_epoch:
            self._salt_epoch = node.group_epoch
            self.memory.set_salt(salt_for(node.group_key))

    def _forget_revoked(self, revoked: frozenset[str]) -> None:
        for device_id in revoked:
            if n := self.memory.forget_producer(device_id):
                log.info("forgot %d translation-memory entries of revoked device %s", n, device_id[:8])

    def _producer(self, entry: MemoryEntry, *, own_ok: bool = False) -> DeviceCertificate | None:
        """The producer's current certificate, if it is a member that may serve translate (or, with
        ``own_ok``, this device: its own cache is usable here, though not shared)."""
        try:
            producer = self.endpoint.node.membership.member(entry.producer)
        except HearthError:
            return None
        if "translate" in producer.serves or (own_ok and producer.device_id == self.endpoint.device_id):
            return producer
        return None

    def _trusted(self, entry: MemoryEntry) -> bool:
        """Fit to use here: from a trusted producer (see `_producer`), and the signature still holds."""
        producer = self._producer(entry, own_ok=True)
        return producer is not None and entry.verify(producer.verify_key)

    # -- answering ------------------------------------------------------------------------------------

    def _answer(self, requester: DeviceCertificate, query: MemoryQuery) -> None:
        dropped = self.endpoint.dropped
        if "translate" not in requester.requests:
            dropped["Forbidden"] += 1
            log.warning(
                "dropped a memory query from %s: its certificate does not allow translate", requester.name
            )
            return
        self._refresh_salt()
        if query.epoch != self._salt_epoch:
            return  # salted for another epoch: it cannot match; the asker is being rekeyed
        hits: list[MemoryEntry] = []
        size = 0
        for entry in self.memory.lookup(query.keys, requester.device_class):
            if entry.pair != query.pair or self._producer(entry) is None:
                continue
            size += len(entry.source) + len(entry.translation)
            if size > MEMORY_REPLY_CHARS:
                break
            hits.append(entry)
        reply = MemoryHits(nonce=query.nonce, entries=hits)
        self.endpoint.send_soon(requester.device_id, Channel.RESPONSES, reply, session=query.reply_session)

    # -- asking ---------------------------------------------------------------------------------------

    def _hits(self, sender: DeviceCertificate, msg: MemoryHits) -> None:
        waiting = self._waits.get(msg.nonce)
        if waiting is not None and sender.device_id in waiting.asked:
            waiting.asked.discard(sender.device_id)
            waiting.entries.extend(msg.entries)
            if not waiting.asked:
                waiting.done.set()

    async def ask(
        self,
        pair: str,
        sentences: dict[str, str],
        timeout: float,
        allowed: Callable[[Peer], bool] = lambda peer: True,
    ) -> dict[str, MemoryEntry]:
        """Ask live peers that keep a shared memory, and that ``allowed`` (the routing policy) lets
        see our sentences, for translations of ``sentences`` (salted digest -> normalized sentence;
        the first 256 are asked). Returns verified entries by digest."""
        endpoint = self.endpoint
        self._refresh_salt()
        now = time.monotonic()
        peers = [
            p for p in endpoint.peers.all() if p.alive(now) and p.presence.translation_memory and allowed(p)
        ]
        if not peers or not sentences or not endpoint.link_up:
            return {}
        if len(self._waits) >= endpoint.limits.max_pending_pings:
            return {}
        nonce = secrets.randbits(62)
        waiting = self._waits[nonce] = _Waiting({p.device_id for p in peers})
        query = MemoryQuery(
            nonce=nonce,
            reply_session=endpoint.node.session,
            epoch=self._salt_epoch,
            pair=pair,
            keys=list(sentences)[:MAX_KEYS],
        )
        try:
            for peer in peers:
                try:
                    await endpoint.send(peer.device_id, Channel.REQUESTS, query, session=peer.session)
                except (TransportError, RecipientNotMemberError, SessionError):
                    waiting.asked.discard(peer.device_id)
            if waiting.asked:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await waiting.done.wait()
        finally:
            self._waits.pop(nonce, None)
        return self._verified(pair, sentences, waiting.entries)

    def _verified(
        self, pair: str, sentences: dict[str, str], entries: list[MemoryEntry]
    ) -> dict[str, MemoryEntry]:
        dropped = self.endpoint.dropped
        found: dict[str, MemoryEntry] = {}
        for entry in entries:
            key = digest(pair, entry.source, self.memory.salt)
            if entry.pair != pair or sentences.get(key) != entry.source or key in found:
                continue
            producer = self._producer(entry)
            if producer is None:
                dropped["MemoryNotAMember"] += 1
                log.warning(
                    "dropped a translation-memory entry from %s: not a member serving translate",
                    entry.producer[:8],
                )
                continue
            if not entry.verify(producer.verify_key) or not self.memory.fresh(entry):
                dropped["MemoryForged"] += 1
                log.warning(
                    "dropped a translation-memory entry with a bad signature or age (claims %s)",
                    producer.name,
                )
                continue
            found[key] = entry
        return found
