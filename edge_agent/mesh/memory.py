"""Shared translation memory: household devices reuse each other's finished translations.

A translation costs a weak appliance tens of milliseconds per sentence; a lookup among peers costs one
mesh round trip. Each entry is signed by the device that produced it (Ed25519 over a canonical encoding),
so a reader trusts an entry only as far as it trusts that household member: a revoked device's entries
are refused, and nobody can forge another member's. Entries are bounded in length and age, the store
in count (LRU). Queries carry keyed digests of the normalized sentences, sealed like every direct
message; the broker sees neither.

Each entry kept here has an audience: the device classes whose queries it may answer. A sentence of
this device's own, whose routing policy keeps its text from some classes (or on this device), is
remembered for those classes only, so a member of an excluded class cannot learn it by asking with the
digest of a guess; a restriction, once set for a sentence, stays until the entry goes.

This module is mesh-side: no onnxruntime, usable by the Home Assistant component.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.mesh.identity import DeviceId
from edge_agent.tasks import DeviceClass

Audience = frozenset[DeviceClass] | None
"""Device classes whose peers' queries an entry may answer; None: any member's."""

MAX_SOURCE_CHARS = 1000
MAX_TRANSLATION_CHARS = 3000
_DOMAIN = b"hearth-translation-memory-v1\x00"


def normalize(sentence: str) -> str:
    """The lookup form of a sentence: NFC, whitespace collapsed, case and punctuation kept (they
    change the translation)."""
    return " ".join(unicodedata.normalize("NFC", sentence).split())


MAX_SKEW_S = 60.0
"""How far in the future an entry's creation time may lie (clock skew between members)."""


def digest(pair: str, sentence: str, salt: bytes = b"") -> str:
    """Key of a normalized sentence. On the wire ``salt`` is a secret only members hold (derived from
    the household group key), so nobody outside can test a guessed sentence against a query."""
    h = hashlib.blake2b(f"{pair}\x00{sentence}".encode(), digest_size=16, key=salt[:64])
    return h.hexdigest()


def salt_for(group_key: bytes) -> bytes:
    """The query salt of one group-key epoch (rotates with the key, so a revoked device loses it)."""
    return hashlib.blake2b(b"translation-memory-salt", digest_size=32, key=group_key,
                           person=b"hearth-tm-salt").digest()  # fmt: skip


class MemoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pair: str = Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    translation: str = Field(max_length=MAX_TRANSLATION_CHARS)
    model: str = Field(max_length=128, description="Pack that produced it, e.g. bergamot-tiny11-en-pt@int8.")
    producer: DeviceId
    created: float = Field(ge=0)
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.pair, self.source, self.translation, self.model, self.producer, self.created)

    def verify(self, key: VerifyKey) -> bool:
        try:
            key.verify(self.signed_bytes(), bytes.fromhex(self.signature))
        except (BadSignatureError, ValueError):
            return False
        return True


def signed_bytes(
    pair: str, source: str, translation: str, model: str, producer: str, created: float
) -> bytes:
    body = [pair, source, translation, model, producer, round(created, 3)]
    return _DOMAIN + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def make_entry(
    key: SigningKey,
    producer: str,
    pair: str,
    source: str,
    translation: str,
    model: str,
    now: float | None = None,
) -> MemoryEntry:
    created = round(time.time() if now is None else now, 3)
    sig = key.sign(signed_bytes(pair, source, translation, model, producer, created)).signature
    return MemoryEntry(pair=pair, source=source, translation=translation, model=model, producer=producer,
                       created=created, signature=sig.hex())  # fmt: skip


def fits(source: str, translation: str) -> bool:
    """Entries worth keeping: within the size bounds (a runaway translation is not shared)."""
    return 0 < len(source) <= MAX_SOURCE_CHARS and len(translation) <= min(
        MAX_TRANSLATION_CHARS, 4 * len(source) + 64
    )


class TranslationMemory:
    """Bounded LRU of verified entries, keyed locally by (pair, normalized source); peers' queries use
    salted digests, indexed per salt (the current group-key epoch)."""

    def __init__(self, *, max_entries: int = 4096, max_age_s: float = 30 * 86400, salt: bytes = b"") -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._entries: OrderedDict[str, MemoryEntry] = OrderedDict()
        self.salt = salt
        self._salted: dict[str, str] = {}
        self._audience: dict[str, frozenset[DeviceClass]] = {}
        """Restricted entries only (local key -> classes); an entry not listed may answer anyone."""
        self.trust: Callable[[MemoryEntry], bool] = lambda entry: True
        """Re-checked on every hit (the mesh sets it: producer still a member, signature valid), so a
        cached entry is never served past its producer's revocation or after tampering."""

    def __len__(self) -> int:
        return len(self._entries)

    def set_salt(self, salt: bytes) -> None:
        """Re-index for a new query salt (after a group-key rotation)."""
        if salt != self.salt:
            self.salt = salt
            self._salted = {digest(e.pair, e.source, salt): k for k, e in self._entries.items()}

    def key(self, pair: str, sentence: str) -> str:
        """The salted digest peers are asked with."""
        return digest(pair, normalize(sentence), self.salt)

    @staticmethod
    def _local(pair: str, source: str) -> str:
        return digest(pair, source)

    def fresh(self, entry: MemoryEntry, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - self.max_age_s <= entry.created <= now + MAX_SKEW_S

    def get(self, pair: str, sentence: str) -> MemoryEntry | None:
        return self._get_local(self._local(pair, normalize(sentence)))

    def _get_local(self, local: str) -> MemoryEntry | None:
        entry = self._entries.get(local)
        if entry is None:
            return None
        if not self.fresh(entry) or not self.trust(entry):
            self._remove(local)
            return None
        self._entries.move_to_end(local)
        return entry

    def _remove(self, local: str) -> None:
        entry = self._entries.pop(local, None)
        self._audience.pop(local, None)
        if entry is not None:
            self._salted.pop(digest(entry.pair, entry.source, self.salt), None)

    def put(self, entry: MemoryEntry, audience: Audience = None) -> None:
        """Store an entry already verified by the caller (or made here), answerable to peers of
        ``audience`` only (narrowed, never widened, by a later put of the same sentence)."""
        if not fits(entry.source, entry.translation) or not self.fresh(entry):
            return
        local = self._local(entry.pair, entry.source)
        known = self._audience.get(local) if local in self._entries else None
        narrowed = known if audience is None else audience if known is None else known & audience
        if narrowed is not None:
            self._audience[local] = narrowed
        self._entries[local] = entry
        self._entries.move_to_end(local)
        self._salted[digest(entry.pair, entry.source, self.salt)] = local
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def lookup(self, keys: Iterable[str], reader: DeviceClass) -> list[MemoryEntry]:
        """Entries for salted digests (a query from a peer of class ``reader``): only those whose
        audience includes it; the others answer as if they were not here."""
        found = []
        for k in keys:
            local = self._salted.get(k)
            if local is None:
                continue
            audience = self._audience.get(local)
            if audience is not None and reader not in audience:
                continue
            if (entry := self._get_local(local)) is not None:
                found.append(entry)
        return found

    def audience(self, pair: str, sentence: str) -> Audience:
        """Who may be answered this sentence's entry (None: any member, or no entry)."""
        return self._audience.get(self._local(pair, normalize(sentence)))

    def forget_producer(self, device_id: str) -> int:
        """Drop a revoked device's entries."""
        gone = [k for k, e in self._entries.items() if e.producer == device_id]
        for k in gone:
            self._remove(k)
        return len(gone)
