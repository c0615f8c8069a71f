"""Model updates over the mesh: say what we hold, serve chunks, fetch a pack from every holder.

A feature of the mesh endpoint (like the translation memory): it registers handlers for its own
messages. Who holds what is found by `sync.holdings` (manifests verified by `TrustedUpdates`, a newer
key set adopted); chunks are verified by `SwarmFetch` against the signed digests, and a seeder
re-verifies what it reads from disk before sending it. Partial holders serve what they have; a device
that finishes seeds at once.

Chunks are asked through `mesh.bulk.BulkPaths`: over a direct TLS link to the holder (`mesh.direct`)
when it announces one and we can reach it, else through the broker; the choice and the fallback live
there, the rules (`SwarmFetch`) are the same on every path. While this device has inference in flight
(`busy`), transfers yield: one chunk in flight at a time, served one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from edge_agent.errors import (
    ChunkDigestError,
    DirectLinkError,
    DirectRefusedError,
    EndlessDataError,
    HearthError,
    MalformedMessageError,
    MalformedUpdateError,
    RecipientNotMemberError,
    TransportError,
    UpdateError,
)
from edge_agent.mesh.bulk import BrokerPath, BulkPaths
from edge_agent.mesh.direct import Ask, DirectLinks
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel, Piece
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import (
    ChunkData,
    ChunkRequest,
    UpdateHoldings,
    UpdateQuery,
)
from edge_agent.supervision import Supervisor
from edge_agent.sync.holdings import MAX_HOLDINGS, Found, Holding, HoldingsDiscovery, holdings_answer
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.staging import (
    STAGING_MAX_AGE_S,
    no_room,
    prepare_staging,
    read_chunk,
    stale_stagings,
    verified_chunks,
    write_chunk,
)
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.swarm import FetchState, SwarmFetch
from edge_agent.sync.trust import TrustedUpdates
from edge_agent.tasks import DeviceClass

__all__ = ["UpdateExchange"]

log = logging.getLogger(__name__)

MAX_REPLIES_PER_PEER = 8
MAX_REPLIES = 32


class UpdateExchange:
    def __init__(
        self,
        endpoint: FeaturePort,
        store: UpdateStore,
        trusted: TrustedUpdates,
        device_class: DeviceClass,
        staging_root: Path,
        *,
        quota_bytes: int | None = None,
        busy: Callable[[], bool] | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.supervisor = supervisor or endpoint.supervisor
        """Counts what peers sent that failed unexpectedly (one holding, one chunk), dropped alone."""
        self.busy = busy or (lambda: False)
        """True while this device has inference in flight: transfers then yield."""
        self.broker = BrokerPath(endpoint)
        """Chunks through the broker: the path every member has (and the fallback)."""
        self.paths = BulkPaths(self.broker)
        """The paths chunks are asked by, in order of preference (`use_direct` adds direct links)."""
        self._direct: DirectLinks | None = None
        self.received: Counter[str] = Counter()
        """Verified chunk bytes received, by path ("direct", "broker")."""
        self._serving_one = asyncio.Lock()
        self.quota_bytes = quota_bytes
        self.store = store
        self.trusted = trusted
        self.device_class = device_class
        self.staging_root = staging_root
        self.holdings: dict[str, Holding] = {}
        self._fetches: dict[str, tuple[SwarmFetch, Path, asyncio.Event]] = {}
        self._asking: dict[str, set[asyncio.Task[None]]] = {}
        """Per fetch (content id), its chunk asks in flight: cancelled when the fetch ends."""
        self._replying: Counter[str] = Counter()
        """Replies being sent, by requester (bounded: see `_room_for`)."""
        self.discovery = HoldingsDiscovery(endpoint, store, trusted, device_class, self.supervisor)
        """Who holds what (and the claims that did not verify)."""
        self._last_fetch: SwarmFetch | None = None
        """The most recent fetch, finished or not (diagnostics: who served what)."""
        endpoint.register(UpdateQuery, self._answer_query)
        endpoint.register(ChunkRequest, self._serve_chunk)

    @property
    def unverifiable(self) -> dict[str, tuple[int, str]]:
        """Model name -> (claimed sequence, why it did not verify): shown, never acted on."""
        return self.discovery.unverifiable

    async def discover(self, timeout: float = 2.0) -> Found:
        """Ask every live member what it holds (`HoldingsDiscovery.discover`)."""
        return await self.discovery.discover(timeout)

    @property
    def direct(self) -> DirectLinks | None:
        """Direct links to holders, tried before the broker; None: broker path only."""
        return self._direct

    @direct.setter
    def direct(self, links: DirectLinks | None) -> None:
        self.use_direct(links)

    def use_direct(self, links: DirectLinks | None) -> None:
        """Ask holders over ``links`` first (once they are open), or the broker only (None)."""
        self._direct = links
        self.paths = BulkPaths(self.broker) if links is None else BulkPaths(links, self.broker)

    # -- holding and serving ------------------------------------------------------------------------

    def hold(
        self, manifest: UpdateManifest, envelope: bytes, directory: Path, have: set[int] | None = None
    ) -> None:
        """Serve ``manifest``'s chunks from ``directory`` (all of them unless ``have`` says otherwise)."""
        if len(self.holdings) >= MAX_HOLDINGS and manifest.content_id not in self.holdings:
            oldest = min(self.holdings, key=lambda c: self.holdings[c].manifest.issued_at)
            del self.holdings[oldest]
        chunks = set(range(len(manifest.chunks))) if have is None else have
        self.holdings[manifest.content_id] = Holding(manifest, envelope, directory, chunks)

    def _room_for(self, requester: str) -> bool:
        """Replies still being sent are bounded per requester and in total (each may hold a chunk): a
        member that floods requests gets the rest dropped, counted, not queued."""
        if self._replying[requester] >= MAX_REPLIES_PER_PEER or sum(self._replying.values()) >= MAX_REPLIES:
            self.endpoint.dropped["UpdateRequestFlood"] += 1
            return False
        return True

    def _reply(
        self, to: DeviceCertificate, messages: list[UpdateHoldings] | list[ChunkData], session: str
    ) -> None:
        """Send one reply (its parts in order) in the background; it counts once against the bound."""
        device = to.device_id
        self._replying[device] += 1

        async def send() -> None:
            try:
                for msg in messages:
                    await self.endpoint.send_quietly(device, Channel.RESPONSES, msg, session=session)
            finally:
                self._replying[device] -= 1
                if self._replying[device] <= 0:
                    del self._replying[device]

        self.endpoint.spawn(send())

    def _answer_query(self, requester: DeviceCertificate, query: UpdateQuery) -> None:
        if not self._room_for(requester.device_id):
            return
        parts = holdings_answer(query.nonce, self.store, self.holdings.values(), self.supervisor)
        self._reply(requester, parts, query.reply_session)

    def _serve_chunk(self, requester: DeviceCertificate, req: ChunkRequest) -> None:
        if not self._room_for(requester.device_id):
            return
        data = self._held_chunk(req.content_id, req.index)
        if data is None:
            self.endpoint.dropped["UnheldChunk"] += 1
            return
        try:  # a held manifest's chunks fit the wire by construction (sync.limits); a bug drops one
            msg = ChunkData(
                nonce=req.nonce, content_id=req.content_id, index=req.index,
                data=base64.b64encode(data).decode(),
            )  # fmt: skip
        except ValidationError as exc:
            self.supervisor.drop("model-updates", "UnsendableChunk", exc, "could not send a chunk")
            return
        self._reply(requester, [msg], req.reply_session)

    def _held_chunk(self, content_id: str, index: int) -> bytes | None:
        """A chunk we hold, re-verified as read (a bad disk is never passed on), or None."""
        holding = self.holdings.get(content_id)
        if holding is None or index not in holding.have:
            return None
        try:
            data = read_chunk(holding.directory, holding.manifest, index)
            TrustedUpdates.verify_chunk(holding.manifest, index, data)
        except (OSError, UpdateError) as exc:
            log.warning("not serving chunk %d of %s: %s", index, holding.manifest.pack_id, exc)
            holding.have.discard(index)
            return None
        return data

    async def serve_direct(self, requester: str, ask: Ask) -> bytes:
        """A chunk for a member over a direct link (`DirectLinks` checked who it is)."""
        if self.busy():  # inference first: serve one chunk at a time while it runs
            async with self._serving_one:
                data = await asyncio.to_thread(self._held_chunk, ask.content_id, ask.index)
        else:
            data = await asyncio.to_thread(self._held_chunk, ask.content_id, ask.index)
        if data is None:
            self.endpoint.dropped["UnheldChunk"] += 1
            raise DirectLinkError(f"chunk {ask.index} of {ask.content_id} is not held here")
        return data

    # -- fetching ------------------------------------------------------------------------------------

    def _arrived(self, sender: str, content_id: str, index: int, data: bytes, path: str) -> None:
        """A chunk we asked ``sender`` for, by either path: verified, then written and served on."""
        entry = self._fetches.get(content_id)
        if entry is None:
            return
        fetch, staging, wake = entry
        try:
            if fetch.on_chunk(sender, index, data):
                write_chunk(staging, fetch.manifest, index, data)
                self.received[path] += len(data)
                holding = self.holdings.get(content_id)
                if holding is not None:
                    holding.have.add(index)  # partial holders serve what they have
        except (ChunkDigestError, EndlessDataError, MalformedUpdateError) as exc:
            log.warning("banned %s for this update: %s", sender[:8], exc)
            self.endpoint.dropped[type(exc).__name__] += 1
        wake.set()

    async def fetch(
        self,
        manifest: UpdateManifest,
        envelope: bytes,
        holders: dict[str, set[int]],
        *,
        rediscover_s: float = 1.0,
    ) -> tuple[SwarmFetch, Path]:
        """Fetch ``manifest``'s pack from every holder into staging (resuming from verified chunks there);
        the fetch's final state says DONE or GAVE_UP with its reason."""
        staging = self.staging_root / manifest.content_id
        if (refusal := no_room(manifest, staging, self.staging_root, self.quota_bytes)) is not None:
            fetch = SwarmFetch(manifest)
            fetch.give_up(refusal)
            return fetch, staging
        prepare_staging(staging, manifest)
        have = await asyncio.to_thread(verified_chunks, staging, manifest)
        fetch = SwarmFetch(manifest, have=have, tiebreak=int(self.endpoint.device_id[:12], 16) or 1)
        for device_id, chunks in holders.items():
            fetch.peer_holds(device_id, chunks)
        self.hold(manifest, envelope, staging, have=set(have))
        wake = asyncio.Event()
        self._fetches[manifest.content_id] = (fetch, staging, wake)
        last_discovery = time.monotonic()
        discovery: asyncio.Task[Found] | None = None
        try:
            while fetch.state is FetchState.FETCHING:
                for device_id, index in fetch.next_requests(limit=1 if self.busy() else None):
                    await self._request(fetch, device_id, manifest.content_id, index)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await wake.wait()
                # New seeders and partial holders: asked in the background, so requests keep flowing.
                if discovery is None and time.monotonic() - last_discovery > rediscover_s:
                    discovery = asyncio.create_task(self.discover())
                    discovery.add_done_callback(lambda _: wake.set())
                elif discovery is not None and discovery.done():
                    last_discovery = time.monotonic()
                    found = discovery.result().get(manifest.content_id)
                    discovery = None
                    for device_id, chunks in (found[2] if found else {}).items():
                        fetch.peer_holds(device_id, chunks)
                for device_id in list(fetch.peers):
                    if not self.endpoint.is_member(device_id) or self.endpoint.peers.get(device_id) is None:
                        fetch.peer_gone(device_id)
        finally:
            if discovery is not None:
                discovery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await discovery
            self._fetches.pop(manifest.content_id, None)
            for task in self._asking.pop(manifest.content_id, set()):
                task.cancel()  # what they would bring has no fetch to go to
            self._last_fetch = fetch
        return fetch, staging

    def prune_staging(self, max_age_s: float = STAGING_MAX_AGE_S) -> list[str]:
        """Remove staged fetches untouched for ``max_age_s`` (a fetch that gave up keeps its verified
        chunks for the next round to resume from, but not forever). Returns the content ids removed."""
        gone = stale_stagings(self.staging_root, self._fetches, max_age_s)
        for entry in gone:
            holding = self.holdings.get(entry.name)
            if holding is not None and holding.directory == entry:
                del self.holdings[entry.name]
        return [entry.name for entry in gone]

    def progress(self) -> dict[str, tuple[UpdateManifest, float]]:
        """Fetches in progress: content id -> (manifest, fraction of bytes verified)."""
        out: dict[str, tuple[UpdateManifest, float]] = {}
        for content_id, (fetch, _, _) in self._fetches.items():
            done, total = fetch.progress
            out[content_id] = (fetch.manifest, done / total if total else 1.0)
        return out

    async def _request(self, fetch: SwarmFetch, device_id: str, content_id: str, index: int) -> None:
        """Ask ``device_id`` for chunk ``index`` in the background (`_ask`); returns once the ask has
        left (through the broker: once the broker acknowledged it). That pacing keeps the broker's queue
        to us short, so presence and holdings answers are not stuck behind chunks: without it the
        swarm through the broker fell back to the seeder (71.6 → 74.9 s in `hearth bench transfer`)."""
        peer = self.endpoint.peers.get(device_id)
        if peer is None:
            fetch.peer_gone(device_id)
            return
        piece = Piece(content_id, index, fetch.manifest.chunk_length(index))
        sent = asyncio.Event()
        name = f"chunk-{index}-from-{device_id[:8]}"
        task = self.endpoint.spawn(self._ask(fetch, peer, piece, sent), name=name)
        asking = self._asking.setdefault(content_id, set())
        asking.add(task)
        task.add_done_callback(asking.discard)
        left = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait({left, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()

    async def _ask(self, fetch: SwarmFetch, peer: Peer, piece: Piece, sent: asyncio.Event) -> None:
        """One chunk from one holder, by whichever path `paths` takes; what comes is verified
        (`_arrived`). A silent holder is left to the fetch's own timeout, which asks again."""
        device_id = peer.device_id
        try:
            path, data = await self.paths.fetch(peer, piece, timeout=fetch.request_timeout_s, sent=sent)
        except TimeoutError:
            return
        except DirectRefusedError:
            fetch.not_held(device_id, piece.index)
            self._wake(piece.resource)
            return
        except MalformedMessageError as exc:  # broker: what came is no chunk at all
            fetch.ban(device_id, str(exc))
            self._wake(piece.resource)
            return
        except (TransportError, RecipientNotMemberError, HearthError) as exc:
            log.info("chunk request to %s failed: %s", device_id[:8], exc)
            fetch.peer_gone(device_id)
            return
        self._arrived(device_id, piece.resource, piece.index, data, path)

    def _wake(self, content_id: str) -> None:
        if (entry := self._fetches.get(content_id)) is not None:
            entry[2].set()
