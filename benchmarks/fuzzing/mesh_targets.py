"""Fuzz targets on the mesh: raw envelopes, every message type, presence adverts, shared corrections,
translation-memory answers, and the answers to this device's own offloaded requests.

Each is an input path a household member (or anyone who can publish on the broker) controls. Inputs
are structure-aware: a valid document built from the household's state when the target opens (the
device's session, the hub's correction, the pack it holds), mutated as JSON and sometimes as bytes
(`hostile`), and sealed with mallory's real keys unless the target is the envelope itself. One input is
one draw of the target's strategy (what Hypothesis prints for a failure); values only known when the
input is delivered (a query's nonce, a request's id) are placeholders filled in then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

from hypothesis import strategies as st

from benchmarks.fuzzing.frames import Forgery, forge, pair_key
from benchmarks.fuzzing.hostile import (
    apply_edits,
    byte_edits,
    dumps,
    one_in,
    payload_of,
    payloads,
    payloads_of,
    wire,
)
from benchmarks.fuzzing.rig import CORRECTED, PAIR, REMEMBERED, SETTLE_S, Broken, Rig
from benchmarks.fuzzing.target import Target
from edge_agent.errors import HearthError
from edge_agent.mesh.corrections import make_correction
from edge_agent.mesh.envelope import KIND_DIRECT, KIND_GROUP, MAX_TIMESTAMP_MS, Opened
from edge_agent.mesh.features import corrections as corrections_feature
from edge_agent.mesh.interfaces import Announcement, Channel
from edge_agent.mesh.memory import make_entry
from edge_agent.mesh.protocol import Failure, MemoryHits, MemoryQuery, Message, Request, encode
from edge_agent.mesh.transports.memory import MemoryTransport
from edge_agent.sync.swarm import encode_bitfield
from edge_agent.task_specs import EMBED, TRANSLATE

__all__ = [
    "MESSAGE_TYPES",
    "CorrectionsTarget",
    "EnvelopeTarget",
    "MemoryTarget",
    "MeshTarget",
    "MessageTarget",
    "PresenceTarget",
    "ResponsesTarget",
]

M = TypeVar("M")
MESSAGE_TYPES: tuple[str, ...] = tuple(
    cls.model_fields["type"].default for cls in get_args(get_args(Message)[0])
)
"""The ``type`` of every message protocol.py defines."""
RID = "5" * 32
"""Placeholder: the id of the request being answered."""
NONCE, OTHER_NONCE = 424242424242, 424242424243
"""Placeholders: the nonce of the query being answered, and one that is not it."""


class MeshTarget(Target):
    """A target on the fuzz household (`rig.Rig`)."""

    def __init__(self) -> None:
        self._rig: Rig | None = None

    @property
    def rig(self) -> Rig:
        assert self._rig is not None, "open() first"
        return self._rig

    async def open(self, tmp: Path) -> None:
        self._rig = Rig(tmp)
        await self._rig.__aenter__()

    async def close(self) -> None:
        if self._rig is not None:
            await self._rig.aclose()
            self._rig = None

    def check(self) -> None:
        self.rig.check()

    async def probe(self) -> None:
        await self.rig.probe()

    # -- mallory's side of an exchange the device under test starts -----------------------------------

    def listen(self) -> asyncio.Queue[tuple[Opened, Message]]:
        """From now on mallory hands every message it receives to the returned queue (the target
        answers them), instead of answering update queries with nothing; `done` restores that."""
        queue: asyncio.Queue[tuple[Opened, Message]] = asyncio.Queue()
        self.rig.mallory.on_message = lambda opened, msg: queue.put_nowait((opened, msg))
        return queue

    def done(self) -> None:
        self.rig.mallory.on_message = self.rig.mallory_default

    @staticmethod
    async def next_of(queue: asyncio.Queue[tuple[Opened, Message]], kind: type[M], what: str) -> M:
        """The next message of ``kind`` mallory received (others are set aside)."""
        try:
            async with asyncio.timeout(SETTLE_S):
                while True:
                    _, msg = await queue.get()
                    if isinstance(msg, kind):
                        return msg
        except TimeoutError:
            raise Broken(
                f"the device under test did not send {what} to mallory within {SETTLE_S:g} s"
            ) from None

    @staticmethod
    async def bounded(awaitable: Awaitable[M], what: str) -> M:
        try:
            async with asyncio.timeout(SETTLE_S):
                return await awaitable
        except TimeoutError:
            raise Broken(f"{what} did not finish within {SETTLE_S:g} s") from None


# -- every message type ------------------------------------------------------------------------------


def message_bases(rig: Rig) -> dict[str, dict[str, Any]]:
    """A valid document of every message type, as mallory could send it to the device under test."""
    mal = rig.mallory
    seeded = rig.seeded
    count = len(seeded.manifest.chunks)
    held = {
        "manifest": base64.b64encode(seeded.envelope).decode(),
        "have": encode_bitfield(range(count), count),
    }
    chunk0 = (seeded.directory / seeded.manifest.files[0].path).read_bytes()[
        : seeded.manifest.chunk_length(0)
    ]
    assert rig.dut.memory is not None
    correction = make_correction(mal.identity.signing_key, mal.id, PAIR, "Hello.", "Olá.").model_dump(
        mode="json"
    )
    bodies: dict[str, dict[str, Any]] = {
        "translate": {"texts": ["Hello there.", CORRECTED[0]], "source": "en", "target": "pt"},
        "embed": {"texts": ["a fridge", "an oven"]},
        "generate": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        "transcribe": {"segments": [{"pcm": "AAAA", "start_ms": 0}]},
        "vad": {"pcm": "AAAA"},
    }
    session, epoch = mal.node.session, rig.dut.node.group_epoch
    requests = {
        f"request-{task}": {
            "type": "request",
            "id": RID,
            "task": task,
            "body": body,
            "reply_session": session,
            "deadline_ms": 5000,
            "stall_ms": 3000,
        }
        for task, body in bodies.items()
    }
    return {
        "presence": mal.presence().model_dump(mode="json"),
        "departure": {"type": "departure", "session": session, "link": 1},
        **requests,
        "accepted": {"type": "accepted", "id": RID, "queue_depth": 0},
        "chunk": {"type": "chunk", "id": RID, "seq": 0, "text": "hi", "token_ids": [1], "final": False},
        "failure": {"type": "failure", "id": RID, "code": "busy", "message": "later"},
        "cancel": {"type": "cancel", "id": RID},
        "ping": {"type": "ping", "nonce": 7, "reply_session": session},
        "pong": {"type": "pong", "nonce": 7},
        "group-key": {"type": "group-key", "epoch": epoch + 1, "key": "ab" * 32},
        "memory-query": {
            "type": "memory-query",
            "nonce": 7,
            "reply_session": session,
            "epoch": epoch,
            "pair": PAIR,
            "keys": [rig.dut.memory.key(PAIR, REMEMBERED[0]), "0" * 32],
        },
        "memory-hits": {
            "type": "memory-hits",
            "nonce": 7,
            "entries": [rig.honest_entry.model_dump(mode="json")],
        },
        "update-query": {"type": "update-query", "nonce": 7, "reply_session": session},
        "update-holdings": {
            "type": "update-holdings",
            "nonce": 7,
            "key_set": base64.b64encode(rig.key_set_envelope).decode(),
            "held": [held],
        },
        "chunk-request": {
            "type": "chunk-request",
            "nonce": 7,
            "reply_session": session,
            "content_id": seeded.manifest.content_id,
            "index": 0,
        },
        "chunk-data": {
            "type": "chunk-data",
            "nonce": 7,
            "content_id": seeded.manifest.content_id,
            "index": 0,
            "data": base64.b64encode(chunk0).decode(),
        },
        "corrections-query": {"type": "corrections-query", "nonce": 7, "reply_session": session, "have": []},
        "corrections-data": {"type": "corrections-data", "nonce": 0, "records": [correction]},
        "update-approval": {"type": "update-approval", "name": "demo", "sequence": 2},
    }


class MessageTarget(MeshTarget):
    name = "message"
    about = (
        "every Message type (JSON from protocol.py, each field mutated; sometimes raw bytes), sealed by a "
        "member and sent to the device's request or response inbox"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        bases = message_bases(self.rig)
        covered = {"request" if k.startswith("request-") else k for k in bases}
        missing = set(MESSAGE_TYPES) - covered  # a new message type must get a base here, or goes unfuzzed
        assert not missing, f"no fuzz base for message type(s) {sorted(missing)}"
        self.inputs = st.tuples(
            st.one_of([st.tuples(st.just(kind), payloads(bases[kind])) for kind in sorted(bases)]),
            st.sampled_from([Channel.REQUESTS, Channel.RESPONSES]),
            one_in(16),  # True: sealed for a session the device no longer runs
        )

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        (_, drawn), channel, stale = data.draw(self.inputs, label="message")
        await rig.mallory.send(rig.dut_id, channel, wire(drawn), "0" * 16 if stale else rig.dut_session)
        await rig.settle()


# -- envelope ----------------------------------------------------------------------------------------

PLACES = ("req", "resp", "req-retained", "board-own", "board-retained", "board-hub", "board-dut", "vanish")
"""Where a frame goes: an inbox of the device under test, a presence board, or no frame at all but the
transport's unsigned "gone" for the sender (an emptied board: worth a check, never a fact)."""
SENDERS = ("mallory", "ghost", "stranger", "mallory-as-hub")


@dataclass(frozen=True)
class FrameRecipe:
    """One forged frame: who signs, where it goes, and each header field (None: the genuine value)."""

    sender: str
    place: str
    payload: tuple[Any, list[tuple[str, int, int, bytes]]] | None
    departure: bool
    version: int | None
    kind: int | None
    sender_id: bytes | None
    recipient: int | None
    counter: int | None
    timestamp: int | None
    epoch: int | None
    topic: int | bytes | None
    topic_length: int | None
    cipher: str | None
    signer: str | None
    edits: list[tuple[str, int, int, bytes]]


TIMESTAMPS = (
    "zero",
    "max-u64",
    "last-valid",
    "first-invalid",
    "61s-behind",
    "61s-ahead",
    "59s-behind",
    "59s-ahead",
)


_PLACE, _SENDER = st.sampled_from(PLACES), st.sampled_from(SENDERS)
_U8, _U32 = st.integers(0, 255), st.integers(0, 2**32 - 1)
_COUNTER = st.sampled_from((0, 1, 2**64 - 1)) | st.integers(0, 2**64 - 1)
_ID16, _RECIPIENT = st.binary(min_size=16, max_size=16), st.integers(0, 2)
_TIMESTAMP, _TOPIC_LENGTH = st.integers(0, len(TIMESTAMPS) - 1), st.integers(0, 65535)
_TOPIC = st.integers(0, 6) | st.binary(max_size=64)
_CIPHER, _SIGNER = st.sampled_from(("pair", "group", "random", "none")), st.sampled_from(("other", "none"))


@st.composite
def frame_recipes(draw: st.DrawFn, target: EnvelopeTarget) -> FrameRecipe:
    def maybe(hostile: st.SearchStrategy[M]) -> M | None:
        return draw(hostile) if draw(one_in(8)) else None

    place = draw(_PLACE)
    departure = place.startswith("board") and draw(st.booleans())
    doc = (target.departure if departure else target.advert) if place.startswith("board") else target.ping
    return FrameRecipe(
        sender=draw(_SENDER),
        place=place,
        payload=payload_of(draw, doc) if draw(st.booleans()) else None,
        departure=departure,
        version=maybe(_U8),
        kind=maybe(_U8),
        sender_id=maybe(_ID16),
        recipient=maybe(_RECIPIENT),
        counter=maybe(_COUNTER),
        timestamp=maybe(_TIMESTAMP),
        epoch=maybe(_U32),
        topic=maybe(_TOPIC),
        topic_length=maybe(_TOPIC_LENGTH),
        cipher=maybe(_CIPHER),
        signer=maybe(_SIGNER),
        edits=draw(byte_edits()) if draw(one_in(8)) else [],
    )


class EnvelopeTarget(MeshTarget):
    name = "envelope"
    about = (
        "raw frames: every header field (version, kind, sender, recipient, counter, time, epoch, topic and "
        "its length), key, signature and bytes, from a member, a revoked member and a stranger, into the "
        "device's inboxes (retained too) and onto presence boards; emptied boards"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        rig = self.rig
        self.ping = {"type": "ping", "nonce": 7, "reply_session": rig.mallory.node.session}
        self.advert = rig.mallory.presence().model_dump(mode="json")
        self.departure = {"type": "departure", "session": rig.mallory.node.session, "link": 1}
        self.inputs = frame_recipes(self)

    def _topic(self, genuine: bytes, choice: int | bytes) -> bytes:
        if isinstance(choice, bytes):
            return choice
        rig = self.rig
        return [
            genuine.replace(rig.dut_session.encode(), b"0" * 16),
            genuine + b"x",
            genuine[:-1],
            b"",
            b"\xff\xfe",
            b"/" * 600,
            str(rig.inbox(Channel.RESPONSES, rig.honest.device_id)).encode(),
        ][choice]

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        r: FrameRecipe = data.draw(self.inputs, label="frame")
        identity = {"ghost": rig.ghost, "stranger": rig.stranger}.get(r.sender, rig.mallory.identity)
        claimed = rig.honest.device_id if r.sender == "mallory-as-hub" else identity.device_id
        if r.place == "vanish":
            rig.sim.empty_board(claimed)
            await rig.settle()
            return
        board = r.place.startswith("board")
        device = {"board-hub": rig.honest.device_id, "board-dut": rig.dut_id}.get(r.place, claimed)
        channel = Channel.REQUESTS if r.place.startswith("req") else Channel.RESPONSES
        topic = str(rig.inbox(Channel.PRESENCE, device)).encode() if board else rig.topic(channel).encode()
        doc = (self.departure if r.departure else self.advert) if board else self.ping
        now = int(time.time() * 1000)
        stamps = (
            0,
            2**64 - 1,
            MAX_TIMESTAMP_MS,
            MAX_TIMESTAMP_MS + 1,
            now - 61_000,
            now + 61_000,
            now - 59_000,
            now + 59_000,
        )
        recipients = (bytes(16), bytes.fromhex(rig.honest.device_id), b"\xff" * 16)
        genuine_epoch = rig.dut.node.group_epoch if board else 0
        f = Forgery(
            version=1 if r.version is None else r.version,
            kind=(KIND_GROUP if board else KIND_DIRECT) if r.kind is None else r.kind,
            sender=bytes.fromhex(claimed) if r.sender_id is None else r.sender_id,
            recipient=(bytes(16) if board else bytes.fromhex(rig.dut_id))
            if r.recipient is None
            else recipients[r.recipient],
            counter=rig.mallory.node.counter.next() if r.counter is None else r.counter,
            timestamp_ms=now if r.timestamp is None else stamps[r.timestamp],
            epoch=genuine_epoch if r.epoch is None else r.epoch,
            topic=topic if r.topic is None else self._topic(topic, r.topic),
            topic_length=r.topic_length,
            cipher=cast(Any, ("group" if board else "pair") if r.cipher is None else r.cipher),
            signer=cast(Any, "sender" if r.signer is None else r.signer),
            payload=dumps(doc) if r.payload is None else wire(r.payload),
        )
        frame = forge(
            f,
            sender=identity,
            other=rig.stranger,
            pair=pair_key(identity, rig.dut.certificate),
            group=rig.dut.node.group_key,
        )
        frame = apply_edits(frame, r.edits) if r.edits else frame
        if not board:
            rig.sim.inject(rig.inbox(channel), frame, retained=r.place.endswith("retained"))
        elif r.place == "board-retained":  # what a broker replays on connecting: the N0 path
            cast(MemoryTransport, rig.dut.node.transport)._put(Announcement(claimed, frame, retained=True))
        else:
            rig.sim.post_announcement(device, frame)
        await rig.settle()


# -- presence ----------------------------------------------------------------------------------------


class PresenceTarget(MeshTarget):
    name = "presence"
    about = (
        "presence adverts and departure notices on mallory's board (live and retained), sealed with the "
        "group key: every field mutated (certificate, CRL, offers, updates, direct contact, numbers)"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        mal = self.rig.mallory
        rich = mal.presence(
            crl=self.rig.dut.membership.crl,
            queue_depth=3,
            free_model_ram_mb=512,
            served=10,
            offloaded=2,
            corrections="0" * 32,
        ).model_dump(mode="json")
        rich["updates"] = [
            {
                "name": "demo",
                "installed": 1,
                "available": 2,
                "state": "fetching",
                "progress": 0.5,
                "detail": "",
                "offered": 2,
            }
        ]
        rich["direct"] = {"hosts": ["192.168.1.20"], "port": 8883, "tls_sha256": "ab" * 32}
        rich["health"] = {"restarts": 0, "dropped": 3}
        docs = [
            mal.presence().model_dump(mode="json"),
            rich,
            {"type": "departure", "session": mal.node.session, "link": 1},
        ]
        self.inputs = st.tuples(st.one_of([payloads(doc) for doc in docs]), one_in(4))

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        drawn, retained = data.draw(self.inputs, label="advert")
        frame = rig.mallory.node.seal_announcement(wire(drawn))
        if retained:  # as a broker replays it to a device connecting
            cast(MemoryTransport, rig.dut.node.transport)._put(
                Announcement(rig.mallory.id, frame, retained=True)
            )
        else:
            rig.sim.post_announcement(rig.mallory.id, frame)
        await rig.settle()

    async def probe(self) -> None:
        # Mallory's genuine advert again (a departure or a bad advert may have removed it).
        await self.rig.mallory.announce(encode(self.rig.mallory.presence()))
        await self.rig.settle()
        await super().probe()


# -- corrections -------------------------------------------------------------------------------------

AUTHORS = ("mallory", "mallory", "mallory", "mallory", "hub", "ghost", "stranger")
PUSH_LIMIT = "PUSHED_RECORDS"
"""The module constant of features.corrections that bounds pushed records per member and window."""
SOURCES = (CORRECTED[0], "Hello.", "ok", "é", "Evil Name!", " spaced  out ", "a" * 300)
TRANSLATIONS = ("Olá.", "aumenta o forno ao máximo", "", "ﬃ")


_AUTHOR, _SOURCE, _TRANSLATION = (
    st.sampled_from(AUTHORS),
    st.sampled_from(SOURCES),
    st.sampled_from(TRANSLATIONS),
)
_WITHDRAWS = st.sampled_from((None, None, "honest", "0" * 32))
_CREATED = st.sampled_from(("now", "in an hour", "epoch", "400 days ago", "year 33658"))


@st.composite
def correction_records(draw: st.DrawFn, fuzz: CorrectionsTarget) -> dict[str, Any]:
    rig = fuzz.rig
    author = {
        "hub": rig.honest.device_id,
        "ghost": rig.ghost.device_id,
        "stranger": rig.stranger.device_id,
    }.get(draw(_AUTHOR), rig.mallory.id)
    withdraws = draw(_WITHDRAWS)
    withdraws = rig.honest_correction.id if withdraws == "honest" else withdraws
    source, translation = draw(_SOURCE), draw(_TRANSLATION)
    offsets = {"now": 0.0, "in an hour": 3600.0, "epoch": -fuzz.now, "400 days ago": -400 * 86400.0}
    created = fuzz.now + offsets.get(draw(_CREATED), 1e12)
    try:  # signed by mallory whoever it claims to be: only mallory's own verify
        record = make_correction(
            rig.mallory.identity.signing_key,
            author,
            PAIR,
            source,
            translation,
            withdraws=withdraws,
            now=created,
        )
        return record.model_dump(mode="json")
    except (ValueError, HearthError):
        return {
            "kind": "correction",
            "pair": PAIR,
            "source": source,
            "target": translation,
            "author": author,
            "created": created,
            "withdraws": withdraws,
            "signature": "0" * 128,
        }


class CorrectionsTarget(MeshTarget):
    name = "corrections"
    about = (
        "shared corrections pushed by a member: records signed by mallory (valid, edited after signing, "
        "claiming the hub or a revoked device, withdrawing the hub's), every field mutated"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        # The push rate limit (30 records a minute per member) would turn all but the first inputs
        # away at the door; it is fuzzed by the message target. Here every input reaches the merge.
        self._limits = vars(corrections_feature)
        self._pushed = self._limits.get(PUSH_LIMIT)
        if self._pushed is not None:
            self._limits[PUSH_LIMIT] = 1 << 40
        self.known = set(self.rig.dut.corrections.records)
        self.now = round(time.time(), 3)
        self.inputs = payloads_of(
            st.lists(correction_records(self), max_size=3).map(
                lambda records: {"type": "corrections-data", "nonce": 0, "records": records}
            )
        )

    async def close(self) -> None:
        if self._pushed is not None:
            self._limits[PUSH_LIMIT] = self._pushed
        await super().close()

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        raw = wire(data.draw(self.inputs, label="push"))
        await rig.mallory.send(rig.dut_id, Channel.REQUESTS, raw, rig.dut_session)
        await rig.settle()

    def check(self) -> None:
        super().check()
        store = self.rig.dut.corrections
        for record_id in set(store.records) - self.known:  # what the input added must pass the rules
            record = store.records[record_id]
            try:
                store.check(record)
            except HearthError as exc:
                raise Broken(f"a stored correction breaks the rules: {exc}: {record!r}") from None
        self.known = set(store.records)


# -- translation memory ------------------------------------------------------------------------------

PRODUCERS = ("genuine", "mallory", "claims-hub", "ghost")
ASKED = (REMEMBERED[0], "Hello.", "Where is the car?")
_PRODUCER, _ENTRY_SOURCE = st.sampled_from(PRODUCERS), st.sampled_from((*ASKED, "Not asked."))


@st.composite
def memory_entries(draw: st.DrawFn, target: MemoryTarget) -> dict[str, Any]:
    rig = target.rig
    kind = draw(_PRODUCER)
    source = draw(_ENTRY_SOURCE)
    if kind == "genuine":
        return rig.honest_entry.model_dump(mode="json")
    producer = {"claims-hub": rig.honest.device_id, "ghost": rig.ghost.device_id}.get(kind, rig.mallory.id)
    entry = make_entry(
        rig.mallory.identity.signing_key, producer, PAIR, source, "traduzido", "bergamot@int8", now=target.now
    )
    return entry.model_dump(mode="json")


class MemoryTarget(MeshTarget):
    name = "memory"
    about = (
        "translation-memory answers to the device's own lookup: entries genuine, signed by mallory, "
        "claiming the hub, edited after signing, from a revoked device; every field mutated"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        self.now = round(time.time(), 3)
        self.inputs = payloads_of(
            st.tuples(st.lists(memory_entries(self), max_size=3), one_in(8)).map(
                lambda t: {"type": "memory-hits", "nonce": OTHER_NONCE if t[1] else NONCE, "entries": t[0]}
            )
        )

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        dut = rig.dut
        assert dut.exchange is not None and dut.memory is not None
        drawn = data.draw(self.inputs, label="hits")
        sentences = {dut.memory.key(PAIR, s): s for s in ASKED}
        queue = self.listen()
        asking = asyncio.create_task(dut.exchange.ask(PAIR, sentences, SETTLE_S))
        try:
            query = await self.next_of(queue, MemoryQuery, "a memory query")
            raw = wire(drawn, {NONCE: query.nonce, OTHER_NONCE: query.nonce ^ 1})
            await rig.mallory.send(rig.dut_id, Channel.RESPONSES, raw, query.reply_session)
            # Then a genuine empty answer: the lookup ends now whether or not the input was taken.
            empty = encode(MemoryHits(nonce=query.nonce))
            await rig.mallory.send(rig.dut_id, Channel.RESPONSES, empty, query.reply_session)
            found = await self.bounded(asking, "a translation-memory lookup")
        finally:
            asking.cancel()
            self.done()
        await rig.settle()
        for key, entry in found.items():
            producer = dut.membership.certs.get(entry.producer)
            if (
                producer is None
                or "translate" not in producer.serves
                or not entry.verify(producer.verify_key)
                or sentences.get(key) != entry.source
            ):
                raise Broken(f"the lookup accepted an entry it should not have: {entry!r}")


# -- answers to this device's requests ---------------------------------------------------------------


class ResponsesTarget(MeshTarget):
    name = "responses"
    about = (
        "answers to the device's own offloaded requests (translate, embed) through its router: accepted, "
        "chunks in any order and shape, results and failures, every field mutated"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        results = {
            "translate": {
                "translations": ["Olá.", "Adeus."],
                "pair": PAIR,
                "model": "m",
                "stats": {"sentences": 2, "source_tokens": 2, "target_tokens": 2, "total_ms": 1.0},
            },
            "embed": {"vectors": [[0.1, 0.2], [0.3, 0.4]], "dim": 2, "model": "m"},
        }

        def answers(task: str) -> st.SearchStrategy[list[Any]]:
            shapes = [
                {"type": "accepted", "id": RID, "queue_depth": 0},
                {"type": "chunk", "id": RID, "seq": 0, "text": "x", "token_ids": [], "final": False},
                {"type": "chunk", "id": RID, "seq": 1, "text": "y", "token_ids": [2], "final": False},
                {"type": "chunk", "id": RID, "seq": 0, "final": True, "body": results[task]},
                {"type": "failure", "id": RID, "code": "busy", "message": "later"},
            ]
            return st.lists(st.one_of([payloads(shape) for shape in shapes]), min_size=1, max_size=4)

        self.inputs = st.one_of([st.tuples(st.just(task), answers(task)) for task in results])

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        task, answers = data.draw(self.inputs, label="answers")
        spec: Any = TRANSLATE if task == "translate" else EMBED
        request = (
            TRANSLATE.request_model(texts=["Hello.", "Bye."], source="en", target="pt")
            if task == "translate"
            else EMBED.request_model(texts=["a", "b"])
        )
        rig.reset_hostile_standing()
        queue = self.listen()
        calling = asyncio.create_task(rig.dut.router.call(spec, request, deadline_s=SETTLE_S))
        try:
            req = await self.next_of(queue, Request, "its request")
            for drawn in answers:
                await rig.mallory.send(
                    rig.dut_id, Channel.RESPONSES, wire(drawn, {RID: req.id}), req.reply_session
                )
            end = Failure(id=req.id, code="busy", message="that is all")  # the stream ends now, whatever came
            await rig.mallory.send(rig.dut_id, Channel.RESPONSES, encode(end), req.reply_session)
            with contextlib.suppress(HearthError):  # any refusal is fine; anything else is a bug
                await self.bounded(calling, "an offloaded request")
        finally:
            calling.cancel()
            self.done()
        await rig.settle()
        if rig.dut.endpoint.streams_open:
            raise Broken(f"{rig.dut.endpoint.streams_open} stream(s) left open after the request ended")
        rig.reset_hostile_standing()
