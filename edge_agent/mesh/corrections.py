"""Shared corrections: a user's fix of a translation, signed by the device it was made on, kept by
every device of the household, and preferred to any model's output or cached translation.

A correction is a record (pair, source, target, model, author, time): the training data a later adapter
(LoRA) step would use, so it is stored whole, not just applied. A withdrawal is a record too, naming the
correction it takes back. Records are a grow-only set merged between devices (any order, any number of
times, same result), bounded per author and in total. For one (pair, sentence) the newest correction not
withdrawn wins.

Who may author either kind: a current member whose certificate says it may correct (the operator's
`hearth household invite --may-correct`), or an admin. That is checked when a record arrives, from the
record alone (so every device keeps the same set whatever the order of arrival), and again whenever a
record is used, so a revoked or re-certified device's records stop counting at once. Any device that may
correct may withdraw any correction: it could override that sentence with a newer correction of its own
anyway, so this gives it nothing more, and lets the household undo a bad one without the hub. A
withdrawal of a correction not seen yet therefore counts when the correction arrives exactly as if it
had come later, and one from a device that may not correct is never stored at all.

"Their own sentence": any member, even one that may not correct, may *decline* a correction for its own
translations (`decline`): the sentences it translates for its own users. A decline is kept on that
device only and changes nothing anywhere else, so it needs no approval; the device then applies the
corrections itself and asks a serving peer not to (`TranslateRequest.apply_corrections`).

This module is mesh-side (no onnxruntime, no config): the Home Assistant component can use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import HearthError
from edge_agent.mesh.files import read_private, write_private
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.identity import DeviceId
from edge_agent.mesh.memory import MAX_SKEW_S, MAX_SOURCE_CHARS, MAX_TRANSLATION_CHARS, normalize

__all__ = ["Correction", "CorrectionError", "Corrections", "corrections_digest", "make_correction"]

log = logging.getLogger(__name__)

_DOMAIN = b"hearth-correction-v1\x00"
MAX_RECORDS = 4096
MAX_PER_AUTHOR = 1024
MAX_DECLINED = 1024


class CorrectionError(HearthError):
    """A correction or withdrawal that is not accepted (unsigned, not a member, not allowed, ...)."""


class Correction(BaseModel):
    """One signed record: a correction, or the withdrawal of one (``withdraws`` its id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["correction", "withdrawal"]
    pair: str = Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    target: str = Field(max_length=MAX_TRANSLATION_CHARS)
    model: str = Field(default="", max_length=128, description="The pack whose output was corrected.")
    author: DeviceId
    created: float = Field(ge=0)
    withdraws: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    def signed_bytes(self) -> bytes:
        body = [self.kind, self.pair, self.source, self.target, self.model, self.author,
                round(self.created, 3), self.withdraws]  # fmt: skip
        return _DOMAIN + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @property
    def id(self) -> str:
        return hashlib.blake2b(self.signed_bytes(), digest_size=16).hexdigest()


def make_correction(
    key: SigningKey,
    author: str,
    pair: str,
    source: str,
    target: str,
    *,
    model: str = "",
    withdraws: str | None = None,
    now: float | None = None,
) -> Correction:
    """A signed record: a correction of ``source``'s translation to ``target``, or (``withdraws``) the
    withdrawal of an earlier one."""
    unsigned = Correction(
        kind="withdrawal" if withdraws else "correction", pair=pair, source=normalize(source),
        target="" if withdraws else normalize(target), model=model, author=author,
        created=round(time.time() if now is None else now, 3), withdraws=withdraws, signature="0" * 128,
    )  # fmt: skip
    signature = key.sign(unsigned.signed_bytes()).signature.hex()
    return unsigned.model_copy(update={"signature": signature})


def corrections_digest(ids: Iterable[str]) -> str:
    """What a device announces about its records: equal digests mean equal sets (nothing to sync)."""
    h = hashlib.blake2b(digest_size=16)
    for record_id in sorted(ids):
        h.update(bytes.fromhex(record_id))
    return h.hexdigest()


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    records: list[Correction] = Field(default_factory=list)
    declined: list[str] = Field(default_factory=list, max_length=MAX_DECLINED)
    """Corrections this device declines for its own translations (ids, oldest first)."""


class Corrections:
    """This device's copy of the household's corrections (persisted in the mesh state directory)."""

    def __init__(
        self,
        member: Callable[[str], DeviceCertificate],
        path: Path | None = None,
        *,
        max_records: int = MAX_RECORDS,
        max_per_author: int = MAX_PER_AUTHOR,
    ) -> None:
        self.member = member
        """The current certificate of a device id, or a HearthError why it is not a member."""
        self.path = path
        self.max_records, self.max_per_author = max_records, max_per_author
        self.records: dict[str, Correction] = {}
        self.declined: dict[str, None] = {}
        """Ids of corrections declined here, oldest first (local: never shared, see the module doc)."""
        self._digest: str | None = None
        if path is not None:
            self._load(path)

    # -- what arrives ---------------------------------------------------------------------------------

    def check(self, record: Correction, now: float | None = None) -> None:
        """Raise CorrectionError unless ``record`` may be kept: its author is a member that may correct,
        the signature is its, it is not from the future, and it is well formed. Judged on the record
        alone, never on what else is held, so the set of records does not depend on arrival order."""
        what = f"{record.kind} {record.id[:8]}"
        try:
            author = self.member(record.author)
        except HearthError as exc:
            raise CorrectionError(f"{what}: {exc}") from None
        if not author.corrects:
            raise CorrectionError(
                f"{what}: {author.name} may not correct translations (the hub approves that: "
                "`hearth household invite --may-correct`)"
            )
        try:
            author.verify_key.verify(record.signed_bytes(), bytes.fromhex(record.signature))
        except (BadSignatureError, ValueError):
            raise CorrectionError(f"{what}: not signed by {author.name}") from None
        if record.created > (time.time() if now is None else now) + MAX_SKEW_S:
            raise CorrectionError(f"{what}: made in the future")
        if record.kind == "withdrawal":
            if record.withdraws is None or record.target:
                raise CorrectionError(f"{what}: names nothing to withdraw")
        elif record.withdraws is not None:
            raise CorrectionError(f"{what}: a correction withdraws nothing")
        elif record.source != normalize(record.source) or record.target != normalize(record.target):
            raise CorrectionError(f"{what}: text is not in its normal form")

    def add(self, record: Correction) -> bool:
        """Merge a checked record (``check`` first). True if it is new here (and still held once the
        bounds are applied)."""
        if record.id in self.records:
            return False
        if record.kind == "correction" and (
            record.source != normalize(record.source) or record.target != normalize(record.target)
        ):
            raise CorrectionError(f"correction {record.id[:8]}: text is not in its normal form")
        self.records[record.id] = record
        self._bound(record.author)
        self._digest = None
        return record.id in self.records

    def merge(self, records: Iterable[Correction]) -> tuple[int, list[str]]:
        """Check and add peers' records: (how many were new, why the refused ones were refused)."""
        added, refused = 0, []
        for record in records:
            if record.id in self.records:  # known: nothing to check again
                continue
            try:
                self.check(record)
                added += self.add(record)
            except CorrectionError as exc:
                refused.append(str(exc))
        if added:
            self.save()
        return added, refused

    def _rank(self, record: Correction, effective: set[str]) -> tuple[int, float]:
        """Which records go first when a bound is reached (lowest first, then oldest): withdrawals of
        corrections not held (they change nothing here, and are what a flood of made-up ids is made of),
        then records that no longer change anything, then withdrawals in effect, then corrections in
        force, so a bound never brings back a withdrawn correction while anything else can go."""
        if record.kind == "withdrawal":
            held = self.records.get(record.withdraws or "")
            return (0 if held is None else 2 if record.id in effective else 1, record.created)
        return (1 if record.id in effective else 3, record.created)

    def _bound(self, author: str) -> None:
        """At most ``max_per_author`` records per author and ``max_records`` in all. Past the total, the
        author holding the most gives up records first: one member filling the store with its own
        records only ever displaces its own."""
        effective: set[str] = set()
        for r in self.records.values():
            if r.kind == "withdrawal" and r.withdraws in self.records:
                effective |= {r.id, r.withdraws}
        by_author: dict[str, list[Correction]] = {}
        for r in self.records.values():
            by_author.setdefault(r.author, []).append(r)
        for device, held in by_author.items():
            if len(held) > self.max_per_author or device == author:
                held.sort(key=lambda r: self._rank(r, effective), reverse=True)
                while len(held) > self.max_per_author:
                    del self.records[held.pop().id]
        while len(self.records) > self.max_records:
            largest = max(by_author.values(), key=len)
            largest.sort(key=lambda r: self._rank(r, effective), reverse=True)
            del self.records[largest.pop().id]

    def forget_author(self, device_id: str) -> int:
        """Drop a revoked device's records."""
        gone = [i for i, r in self.records.items() if r.author == device_id]
        for record_id in gone:
            del self.records[record_id]
        if gone:
            self._digest = None
            self.save()
        return len(gone)

    # -- declining, for this device's own translations ---------------------------------------------------

    def decline(self, record_id: str) -> Correction:
        """Stop using a correction for this device's own translations (no one else is affected)."""
        record = self.records.get(record_id)
        if record is None or record.kind != "correction":
            raise CorrectionError(f"no correction {record_id} here (`hearth corrections list` shows them)")
        self.declined.pop(record_id, None)
        self.declined[record_id] = None
        while len(self.declined) > MAX_DECLINED:
            self.declined.pop(next(iter(self.declined)))
        self.save()
        return record

    # -- what counts ----------------------------------------------------------------------------------

    def _counts(self, record: Correction) -> bool:
        """Still counts: its author is still a member that may correct (signatures were checked when
        the record came in; membership can change since)."""
        try:
            return self.member(record.author).corrects
        except HearthError:
            return False

    def active(self, *, here: bool = True) -> dict[tuple[str, str], Correction]:
        """(pair, normalized source) -> the correction in force: the newest not withdrawn, from a
        device that may still correct. ``here``: for this device's own translations, so without the
        corrections it declined; False when translating for a peer (the household's view)."""
        corrections = {i: r for i, r in self.records.items() if r.kind == "correction" and self._counts(r)}
        withdrawn = {
            r.withdraws
            for r in self.records.values()
            if r.kind == "withdrawal"
            and (c := corrections.get(r.withdraws or "")) is not None
            and (c.pair, c.source) == (r.pair, r.source)
            and self._counts(r)
        }
        best: dict[tuple[str, str], Correction] = {}
        for r in corrections.values():
            if r.id in withdrawn or (here and r.id in self.declined):
                continue
            key = (r.pair, r.source)
            if key not in best or (r.created, r.id) > (best[key].created, best[key].id):
                best[key] = r
        return best

    def active_for(self, pair: str, *, here: bool = True) -> dict[str, Correction]:
        """Normalized source -> the correction in force, for one language pair."""
        if not self.records:
            return {}
        return {source: r for (p, source), r in self.active(here=here).items() if p == pair}

    def lookup(self, pair: str, sentences: Iterable[str], *, here: bool = True) -> dict[str, Correction]:
        """Corrections in force for ``sentences`` (keyed by the sentence as given)."""
        active = self.active(here=here)
        found = {}
        for sentence in sentences:
            record = active.get((pair, normalize(sentence)))
            if record is not None:
                found[sentence] = record
        return found

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = corrections_digest(self.records)
        return self._digest

    # -- persistence ----------------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            stored = _Stored.model_validate_json(read_private(path))
        except FileNotFoundError:
            return
        except (OSError, ValidationError, HearthError) as exc:
            log.warning("ignoring unreadable corrections in %s (%s); peers will send them again", path, exc)
            return
        # Checked when they arrived; written only by this device (owner-only file). Authors' standing
        # is checked whenever they are used: their certificates may only arrive with their presence.
        self.records = {r.id: r for r in stored.records}
        self.declined = dict.fromkeys(stored.declined)

    def save(self) -> None:
        if self.path is not None:
            stored = _Stored(
                records=sorted(self.records.values(), key=lambda r: r.created), declined=list(self.declined)
            )
            write_private(self.path, stored.model_dump_json())
