"""Fuzz targets on model updates over the mesh: holdings answers, the manifests and key sets inside
them, and chunk data answering a fetch.

The device under test asks (a real `UpdateExchange.discover` or `fetch`, as its `Updater` runs them);
mallory answers with what the target draws, then with a genuine empty answer so the exchange ends at
once whether or not the input was taken. After each input: whatever discovery returned verifies under
the device's trusted key set, the update status (what presence and Home Assistant show) still builds,
and a fetch never counts as held a chunk that does not verify.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from nacl.signing import SigningKey

from benchmarks.fuzzing.hostile import (
    HOSTILE_TEXT,
    dumps,
    mutate,
    mutate_bytes,
    one_in,
    payload_of,
    payloads,
    payloads_of,
    wire,
)
from benchmarks.fuzzing.mesh_targets import NONCE, OTHER_NONCE, MeshTarget
from benchmarks.fuzzing.rig import SETTLE_S, Broken, Pack, Rig
from edge_agent.errors import UpdateError
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import ChunkRequest, UpdateHoldings, UpdateQuery, encode
from edge_agent.sync.keys import KEY_SET_TYPE
from edge_agent.sync.manifest import MANIFEST_TYPE, UpdateManifest
from edge_agent.sync.signing import seal
from edge_agent.sync.staging import read_chunk
from edge_agent.sync.swarm import encode_bitfield

__all__ = ["ChunksTarget", "HoldingsTarget", "ManifestsTarget"]

SIGNERS = ("update-key", "mallory", "root", "none", "genuine-signature")
PAYLOAD_TYPES = (MANIFEST_TYPE, KEY_SET_TYPE, "", "application/json", MANIFEST_TYPE.upper())
CLAIMED_NAMES = ("Evil Name!", "demo", "x" * 81, *HOSTILE_TEXT[:8])
CLAIMED_SEQUENCES = (2, 3, 2**53, 2**63, 10**400, -1)
_SIGNER, _PAYLOAD_TYPE = st.sampled_from(SIGNERS), st.sampled_from(PAYLOAD_TYPES)
_NAME, _SEQUENCE = st.sampled_from(CLAIMED_NAMES), st.sampled_from(CLAIMED_SEQUENCES)
_HOW = st.sampled_from(("genuine", "bytes", "claim"))
_KEY_SET = st.sampled_from(("none", "genuine", "bytes", "signed"))
_JUNK_BITFIELD = st.binary(max_size=8)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def bitfield(pack: Pack) -> str:
    count = len(pack.manifest.chunks)
    return encode_bitfield(range(count), count)


def envelope(draw: st.DrawFn, rig: Rig, payload_type: str, body: Any, genuine: bytes) -> str:
    """``body`` (JSON) in a signed envelope as drawn, base64: signed by a trusted update key (a member
    holding one, or a publisher's bug), by mallory, by the household root, by nobody, or carrying the
    genuine envelope's signature over these other bytes; the envelope itself sometimes mutated."""
    signer = draw(_SIGNER)
    keys: dict[str, list[SigningKey]] = {
        "update-key": [rig.update_key],
        "mallory": [rig.mallory.identity.signing_key],
        "root": [rig.root_key],
        "none": [],
    }
    if signer == "genuine-signature":
        doc = json.loads(genuine)
        doc["payload"] = b64(dumps(body))
        sealed = dumps(doc)
    else:
        kind = payload_type if draw(st.booleans()) else draw(_PAYLOAD_TYPE)
        sealed = seal(kind, dumps(body), keys[signer])
    if draw(one_in(6)):
        sealed = wire(payload_of(draw, json.loads(sealed)))
    return b64(sealed)


@st.composite
def held_updates(draw: st.DrawFn, rig: Rig) -> dict[str, Any]:
    """One entry of a holdings answer: a genuine manifest, its bytes mutated, or an unsigned claim of a
    name and sequence (the N1 shape); its chunk bitfield true or not."""
    pack = rig.wanted if draw(st.booleans()) else rig.seeded
    how = draw(_HOW)
    text = b64(pack.envelope)
    if how == "bytes":
        text = b64(mutate_bytes(draw, pack.envelope))
    elif how == "claim":
        claim = pack.manifest.model_dump(mode="json")
        claim["name"], claim["sequence"] = draw(_NAME), draw(_SEQUENCE)
        text = envelope(draw, rig, MANIFEST_TYPE, claim, pack.envelope)
    have = bitfield(pack) if draw(st.booleans()) else b64(draw(_JUNK_BITFIELD))
    return {"manifest": text, "have": have}


@st.composite
def holdings_answers(
    draw: st.DrawFn, rig: Rig, held: st.SearchStrategy[list[dict[str, Any]]]
) -> dict[str, Any]:
    key_set = draw(_KEY_SET)
    key_text: str | None = None
    if key_set == "genuine":
        key_text = b64(rig.key_set_envelope)
    elif key_set == "bytes":
        key_text = b64(mutate_bytes(draw, rig.key_set_envelope))
    elif key_set == "signed":
        body = mutate(draw, rig.key_set.model_dump(mode="json"))
        key_text = envelope(draw, rig, KEY_SET_TYPE, body, rig.key_set_envelope)
    return {
        "type": "update-holdings",
        "nonce": OTHER_NONCE if draw(one_in(8)) else NONCE,
        "key_set": key_text,
        "held": draw(held),
        "more": draw(st.booleans()),
    }


@st.composite
def manifest_answers(draw: st.DrawFn, rig: Rig) -> dict[str, Any]:
    pack = rig.wanted
    body = mutate(draw, pack.manifest.model_dump(mode="json"), max_ops=4)
    text = envelope(draw, rig, MANIFEST_TYPE, body, pack.envelope)
    return {"type": "update-holdings", "nonce": NONCE, "held": [{"manifest": text, "have": bitfield(pack)}]}


class _Discovery(MeshTarget):
    """Mallory answers the device's update query with the drawn parts, then with nothing."""

    inputs: st.SearchStrategy[list[tuple[Any, list[tuple[str, int, int, bytes]]]]]

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        parts = data.draw(self.inputs, label="holdings")
        queue = self.listen()
        discovering = asyncio.create_task(rig.updater.exchange.discover(timeout=SETTLE_S))
        try:
            query = await self.next_of(queue, UpdateQuery, "an update query")
            for drawn in parts:
                raw = wire(drawn, {NONCE: query.nonce, OTHER_NONCE: query.nonce ^ 1})
                await rig.mallory.send(rig.dut_id, Channel.RESPONSES, raw, query.reply_session)
            end = encode(UpdateHoldings(nonce=query.nonce))
            await rig.mallory.send(rig.dut_id, Channel.RESPONSES, end, query.reply_session)
            found = await self.bounded(discovering, "update discovery")
        finally:
            discovering.cancel()
            self.done()
        await rig.settle()
        trusted = rig.updater.trusted
        for manifest, envelope, holders in found.values():
            try:
                again = trusted.verify_manifest(envelope, rig.dut.certificate.device_class)
            except UpdateError as exc:
                raise Broken(f"discovery returned a manifest that does not verify: {exc}") from None
            if again != manifest or any(i >= len(manifest.chunks) for h in holders.values() for i in h):
                raise Broken(f"discovery returned {manifest.pack_id} with holdings past its chunks")
        try:  # what presence and Home Assistant show about updates must still build
            rig.updater.status()
        except Exception as exc:
            raise Broken(f"Updater.status() raises after this input: {type(exc).__name__}: {exc}") from None


class HoldingsTarget(_Discovery):
    name = "holdings"
    about = (
        "holdings answers to the device's update query: key sets, held manifests (genuine, unsigned, "
        "edited), chunk bitfields, parts and nonces, every field mutated"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        held = st.lists(held_updates(self.rig), max_size=3)
        self.inputs = st.lists(payloads_of(holdings_answers(self.rig, held)), min_size=1, max_size=2)


class ManifestsTarget(_Discovery):
    name = "manifests"
    about = (
        "manifests in holdings answers: the wanted pack's manifest with fields mutated (sizes, chunks, "
        "dates, names, classes, sequence), signed by a trusted update key, mallory, the root or nobody"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        self.inputs = st.lists(payloads_of(manifest_answers(self.rig)), min_size=1, max_size=1)


DATA = ("genuine", "zeros", "short", "long", "other-chunk", "empty", "not-base64")
INDEX = 777_777
"""Placeholder: the index of the chunk asked for."""


class ChunksTarget(MeshTarget):
    name = "chunks"
    about = (
        "chunk data answering the device's fetch of a pack mallory claims to hold: genuine, wrong bytes, "
        "short, long, another chunk, other nonces, not base64, every field mutated"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        pack = self.rig.wanted
        self.chunks = [read_chunk(pack.directory, pack.manifest, i) for i in range(len(pack.manifest.chunks))]
        content_id = pack.manifest.content_id

        def answer(how: str) -> st.SearchStrategy[Any]:
            doc = {
                "type": "chunk-data",
                "nonce": NONCE,
                "content_id": content_id,
                "index": INDEX,
                "data": f"@{how}@",
            }
            return st.one_of(st.just((doc, [])), payloads(doc))

        self.inputs = st.lists(st.one_of([answer(how) for how in DATA]), min_size=1, max_size=4)

    def _data(self, index: int) -> dict[Any, Any]:
        """The placeholder values for an answer to a request for chunk ``index``."""
        chunk = self.chunks[index] if 0 <= index < len(self.chunks) else b""
        raw = {
            "genuine": chunk,
            "zeros": bytes(len(chunk)),
            "short": chunk[:-1],
            "long": chunk + b"\x00",
            "other-chunk": self.chunks[(index + 1) % len(self.chunks)],
            "empty": b"",
        }
        values: dict[Any, Any] = {f"@{how}@": b64(data) for how, data in raw.items()}
        values["@not-base64@"] = "@@ not base64 @@"
        return values

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        pack = rig.wanted
        exchange = rig.updater.exchange
        answers = data.draw(self.inputs, label="answers")
        holding = exchange.holdings.get(pack.manifest.content_id)
        if holding is not None and len(holding.have) == len(pack.manifest.chunks):  # fetched whole: again
            del exchange.holdings[pack.manifest.content_id]
            rig.wipe_staging(pack)
        queue = self.listen()
        holders = {rig.mallory.id: set(range(len(pack.manifest.chunks)))}
        fetching = asyncio.create_task(
            exchange.fetch(pack.manifest, pack.envelope, holders, rediscover_s=3600)
        )
        try:
            first = asyncio.create_task(self.next_of(queue, ChunkRequest, "a chunk request"))
            await asyncio.wait([first, fetching], return_when=asyncio.FIRST_COMPLETED)
            if not first.done():  # the fetch ended without asking (staging already complete)
                first.cancel()
            else:
                asked = [first.result()]
                for drawn in answers:
                    while not queue.empty():  # what it asked meanwhile (it asks a few chunks at once)
                        if isinstance(msg := queue.get_nowait()[1], ChunkRequest):
                            asked.append(msg)
                    if not asked or fetching.done():
                        break  # it asks mallory nothing more (banned, or done): the input ends here
                    req = asked.pop(0)
                    values = {NONCE: req.nonce, INDEX: req.index, **self._data(req.index)}
                    raw = wire(drawn, values)
                    await rig.mallory.send(rig.dut_id, Channel.RESPONSES, raw, req.reply_session)
                    await rig.settle()
        finally:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
            self.done()
        if not fetching.cancelled() and (exc := fetching.exception()) is not None:
            raise Broken(f"the fetch failed: {type(exc).__name__}: {exc}")
        await rig.settle()
        self.check_staging(pack.manifest)

    def check_staging(self, manifest: UpdateManifest) -> None:
        """Every chunk the device counts as held (and serves) is byte for byte the published one:
        compared with the pack itself, not with the verifier under test."""
        exchange = self.rig.updater.exchange
        holding = exchange.holdings.get(manifest.content_id)
        if holding is None:
            return
        staging = exchange.staging_root / manifest.content_id
        bad = sorted(i for i in holding.have if read_chunk(staging, manifest, i) != self.chunks[i])
        if bad:
            raise Broken(f"the device holds and serves chunks {bad} that are not the published ones")
