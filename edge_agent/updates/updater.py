"""Keeps this device's packs current from its household: seeds what it holds, fetches what its plan
runs when a peer holds a newer signed sequence, activates it (health check, rollback) and reports.

The agent-side glue over `sync` (trust, swarm, exchange) and `activation`; the root runs it as one
task. It reaches the mesh through `FeaturePort` only: handlers for its messages, its rows and direct
contact contributed to this device's presence, peers' adverts watched; what it adds it removes on
exit. Engines keep serving while a pack is fetched and checked; the switch is one rename, and the
engines loaded from the old pack are retired (``retire``) so the next request loads the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from edge_agent.errors import HearthError, PackError, UpdateError
from edge_agent.mesh.direct import DirectLinks
from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import UpdateApproval, UpdateStatus
from edge_agent.models.selection import Plan
from edge_agent.models.store import PackStore
from edge_agent.supervision import Supervisor
from edge_agent.sync.exchange import UpdateExchange
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.staging import verified_chunks
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.swarm import FetchState
from edge_agent.sync.trust import unverified_manifest
from edge_agent.updates.activation import ActivationResult, activate
from edge_agent.updates.approvals import Approvals
from edge_agent.updates.links import open_links
from edge_agent.updates.ports import DeviceFacts, UpdateSettings
from edge_agent.updates.status import UpdateOutcome, status_rows

__all__ = ["UpdateOutcome", "Updater", "UpdaterState"]

log = logging.getLogger(__name__)


class UpdaterState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _idle() -> bool:
    return False


def _nothing_loaded(pack_id: str) -> None:
    return None


class Updater:
    """Open it (``async with``) to join the device's presence (and open direct links, if asked for);
    ``run_forever`` (a serving agent) or ``check_once`` (a pull) do the rounds."""

    def __init__(
        self,
        port: FeaturePort,
        store: PackStore,
        *,
        device: DeviceFacts,
        plan: Plan,
        settings: UpdateSettings | None = None,
        serves: bool = False,
        busy: Callable[[], bool] = _idle,
        retire: Callable[[str], object] = _nothing_loaded,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``port``: the mesh endpoint; ``plan``: what this device runs (the packs it wants);
        ``serves``: it serves peers (announces what it seeds, listens for direct links); ``busy``: is
        inference in flight here (transfers yield to it); ``retire``: drop the engines loaded from a
        replaced pack; ``supervisor``: restarts the loop, counts dropped rows (default: the port's)."""
        self.port = port
        self.store = store
        self.device = device
        self.plan = plan
        self.settings = settings or UpdateSettings()
        self.serves = serves
        self.retire = retire
        self.supervision: Supervisor = supervisor or port.supervisor
        """The supervisor in use."""
        self.state = UpdaterState.UNOPENED
        self.updates = UpdateStore(device.state_dir)
        self.trusted, self.problems = self.updates.load_trust(device.root_key, device.household_id)
        quota_mb = self.settings.quota_mb
        self.exchange = UpdateExchange(
            port,
            self.updates,
            self.trusted,
            device.certificate.device_class,
            self.updates.dir / "staging",
            quota_bytes=quota_mb << 20 if quota_mb else None,
            busy=busy,
            supervisor=self.supervision,
        )
        self.outcomes: list[UpdateOutcome] = []
        self.rounds = 0
        """Update rounds finished (the first runs at start)."""
        self.approvals = Approvals(self.updates.dir, self.wanted_names, port.dropped)
        self._busy = asyncio.Lock()
        self._wake = asyncio.Event()
        self._announced: set[tuple[str, str, int]] = set()
        self._direct: DirectLinks | None = None
        self._leave: list[Callable[[], None]] = []
        """Removes what this updater added to the device's presence."""
        port.register(UpdateApproval, self._approval)

    @property
    def interval_s(self) -> float:
        return self.settings.interval_s

    @property
    def links(self) -> DirectLinks | None:
        """This device's direct links while open (chunks, requests and streams use them)."""
        return self._direct

    @property
    def awaiting(self) -> dict[str, int]:
        """Per model, the newest sequence found that waits for approval (policy "ask")."""
        return self.approvals.awaiting

    @property
    def approved(self) -> dict[str, int]:
        """Per model, the highest sequence approved here (persisted: a restart keeps the approval)."""
        return self.approvals.approved

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Report in this device's presence; open the direct links (if asked for) and announce them:
        without them chunks use the broker."""
        if self.state is not UpdaterState.UNOPENED:
            raise RuntimeError(f"this updater is {self.state.value}; make a new one")
        self.state = UpdaterState.OPEN
        self._leave.append(self.port.contribute_presence(self._presence_rows))
        if self.settings.direct:
            await self._open_direct()
        return self

    async def _open_direct(self) -> None:
        links = await open_links(
            self.port.node, self.exchange, self.settings, listen=self.serves, supervisor=self.supervision
        )
        if links is None:
            return
        self._direct = self.exchange.direct = links
        self._leave.append(self.port.carry(links))  # requests and streams take the links too
        contact = links.contact
        if contact is not None:
            self._leave.append(self.port.contribute_presence(lambda: {"direct": contact}))
            with contextlib.suppress(HearthError):  # peers learn the contact now, not one interval later
                await self.port.republish_presence()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.state = UpdaterState.CLOSED
        while self._leave:
            self._leave.pop()()
        self.exchange.direct = None
        if self._direct is not None:
            await self._direct.close()

    def _presence_rows(self) -> Mapping[str, Any]:
        return {"updates": self.status()}

    # -- seeding -------------------------------------------------------------------------------------

    async def seed_stored(self) -> int:
        """Serve every stored manifest whose pack is installed here unchanged (published or activated)
        and not served yet: at start, and at each round (a manifest `hearth models publish` just wrote)."""
        seeded = 0
        for path, raw in self.updates.stored_manifests():
            try:
                manifest = unverified_manifest(raw, path.name)
                if manifest.content_id in self.exchange.holdings:
                    continue
                pack = self.store.get(manifest.pack_id)
            except (UpdateError, PackError) as exc:
                log.info("not seeding %s: %s", path.name, exc)
                continue
            have = await asyncio.to_thread(verified_chunks, pack.path, manifest)
            if have:
                self.exchange.hold(manifest, raw, pack.path, have)
                seeded += 1
        return seeded

    def status(self) -> list[UpdateStatus]:
        """Per model: what is installed, offered, fetched, awaited (see `status_rows`); never raises."""
        return status_rows(self.exchange, self.trusted.installed, self.outcomes, self.awaiting,
                           self.wanted_names, self.supervision)  # fmt: skip

    def _planned(self) -> set[str]:
        return {tp.chosen_id for tp in self.plan.tasks.values() if tp.chosen_id}

    def wanted_names(self) -> set[str]:
        """Models this device runs or holds (by name: what peers' presence announces)."""
        names = {p.manifest.name for p in self.store.list()}
        return names | {pack_id.partition("@")[0] for pack_id in self._planned()}

    def wanted(self, manifest: UpdateManifest) -> bool:
        """This device runs (or holds) that pack: its plan chose it, or it is installed here."""
        installed = {p.pack_id for p in self.store.list()}
        return manifest.pack_id in self._planned() | installed

    def _heard(self, opened: Opened) -> None:
        """A peer's presence announces a model we run at a sequence above ours: a round now, not at
        the next interval. Each (peer, model, sequence) wakes us once, so an offer we refuse does not
        loop; the memory of those is bounded."""
        peer = self.port.peers.get(opened.header.sender)
        if peer is None:
            return
        for status in peer.presence.updates:
            if status.offered <= self.trusted.installed.get(status.name, 0):
                continue
            seen = (peer.device_id, status.name, status.offered)
            if seen in self._announced or status.name not in self.wanted_names():
                continue
            if len(self._announced) >= 1024:
                self._announced.clear()
            self._announced.add(seen)
            self._wake.set()

    # -- updating ------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """A round at start, then every ``interval_s`` or as soon as a peer announces a newer pack;
        supervised: a round that fails unexpectedly is logged and counted, and the loop goes on after
        a backoff (one bad holding is dropped inside the round, without a restart)."""
        unwatch = self.port.watch_presence(self._heard)
        try:
            await self.supervision.supervise("model-updates", self._rounds)
        finally:
            unwatch()

    async def _rounds(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.check_once()
            except HearthError as exc:  # reported; the next round tries again
                log.warning("model update round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval_s):
                    await self._wake.wait()

    async def check_once(self, only: set[str] | None = None, *, asked: bool = False) -> list[UpdateOutcome]:
        """One round: ask peers, fetch and activate every newer pack this device wants (of the models
        named in ``only``, if given). ``asked``: the user asked for this round here (`hearth models
        pull`), which approves what it finds when the policy waits for approval."""
        async with self._busy:
            if await self.seed_stored() and self.serves:  # newly published here: announce it
                with contextlib.suppress(HearthError):
                    await self.port.republish_presence()
            for content_id in await asyncio.to_thread(self.exchange.prune_staging):
                log.info("removed staged update %s: untouched for a week", content_id)
            found = await self.exchange.discover()
            done: list[UpdateOutcome] = []
            for manifest, envelope, holders in sorted(found.values(), key=lambda f: f[0].sequence):
                if only is not None and manifest.name not in only:
                    continue
                if not self.wanted(manifest) or manifest.sequence <= self.trusted.installed.get(
                    manifest.name, 0
                ):
                    continue
                if asked:
                    self.approvals.approve(manifest.name, manifest.sequence)
                if self.settings.approval == "ask" and self.approvals.holds_back(manifest):
                    continue
                self.awaiting.pop(manifest.name, None)
                done.append(await self._install(manifest, envelope, holders))
            self.outcomes.extend(done)
            del self.outcomes[:-32]
            self.rounds += 1
            return done

    def _approval(self, sender: DeviceCertificate, msg: UpdateApproval) -> None:
        if self.approvals.heard(sender, msg):
            self._wake.set()

    async def _install(
        self, manifest: UpdateManifest, envelope: bytes, holders: dict[str, set[int]]
    ) -> UpdateOutcome:
        label = f"{manifest.pack_id} sequence {manifest.sequence}"
        log.info("fetching %s (%.1f MB) from %d peer(s)", label, manifest.total_size / 1e6, len(holders))
        fetch, staging = await self.exchange.fetch(manifest, envelope, holders)
        if fetch.state is not FetchState.DONE:  # staging kept: the next round resumes from it
            log.warning("gave up on %s: %s", label, fetch.reason)
            return UpdateOutcome(manifest.pack_id, manifest.sequence, "gave up", fetch.reason)
        result: ActivationResult = await asyncio.to_thread(
            activate, manifest, envelope, staging,
            store=self.store, updates=self.updates, trusted=self.trusted,
            identity=self.device.signing_key, device_id=self.device.certificate.device_id,
        )  # fmt: skip
        if result.activated and result.pack is not None:
            self.retire(manifest.pack_id)
            self.exchange.hold(manifest, envelope, result.pack.path)  # seed the installed copy
        else:
            self.exchange.holdings.pop(manifest.content_id, None)
        shutil.rmtree(staging, ignore_errors=True)  # the store holds its own copy; a failure leaves nothing
        return UpdateOutcome(
            manifest.pack_id,
            manifest.sequence,
            result.report.result,
            result.report.reason,
            result.signed_report,
        )
