"""Keeps this device's packs current from its household: seeds what it holds, fetches what its plan
runs when a peer holds a newer signed sequence, activates it (health check, rollback) and reports.

The agent-side glue over `sync` (trust, swarm, exchange) and `models.activation`; it runs as one task
of the `Hearth` façade. Engines keep serving while a pack is fetched and checked; the switch is one
rename, and the engines loaded from the old pack are retired so the next request loads the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import shutil
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import ValidationError

from edge_agent.errors import HearthError, PackError, UpdateError
from edge_agent.mesh.direct import DirectLinks, Network, local_address_towards, local_network
from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import UpdateApproval, UpdateStatus
from edge_agent.models.activation import ActivationResult, activate
from edge_agent.models.store import PackStore
from edge_agent.supervision import Supervisor
from edge_agent.sync.exchange import UpdateExchange, verified_chunks
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.swarm import FetchState
from edge_agent.sync.trust import unverified_manifest

if TYPE_CHECKING:
    from edge_agent.service import MeshService

__all__ = ["UpdateOutcome", "Updater"]

Finished = Literal["activated", "rolled-back", "refused", "gave up"]
UpdateState = Literal[Finished, "current", "fetching", "awaiting-approval", "unverifiable"]

log = logging.getLogger(__name__)


@dataclass
class UpdateOutcome:
    pack_id: str
    sequence: int
    state: Finished
    reason: str = ""
    report: bytes = b""


@dataclass
class Updater:
    service: MeshService
    store: PackStore
    interval_s: float = 300.0
    quota_mb: int | None = None
    direct: bool = False
    """Fetch chunks over direct links to holders (else through the broker only)."""
    direct_host: str | None = None
    """Also serve chunks over direct links on this address (None: ask only, as a one-shot command)."""
    direct_port: int = 0
    approval: Literal["automatic", "ask"] = "automatic"
    """"ask": newer packs wait for a controller's approval (`approve`) or an explicit pull."""
    supervisor: Supervisor | None = None
    """Restarts the update loop after an unexpected error; counts holdings and status rows dropped
    (None: the service's, so `hearth peers` and presence show them; the agent passes its own)."""
    outcomes: list[UpdateOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        svc = self.service
        self.supervision: Supervisor = self.supervisor or svc.supervisor
        """The supervisor in use."""
        self.updates = UpdateStore(svc.state.dir)
        self.trusted, problems = self.updates.load_trust(svc.membership.root_key, svc.membership.household_id)
        self.problems = problems
        self.exchange = UpdateExchange(
            svc.endpoint,
            self.updates,
            self.trusted,
            svc.certificate.device_class,
            self.updates.dir / "staging",
            quota_bytes=self.quota_mb << 20 if self.quota_mb else None,
            busy=svc.inference_busy,
            supervisor=self.supervision,
        )
        self._busy = asyncio.Lock()
        self._direct: DirectLinks | None = None
        self.rounds = 0
        """Update rounds finished (the first runs at start)."""
        self._wake = asyncio.Event()
        self._announced: set[tuple[str, str, int]] = set()
        self.awaiting: dict[str, int] = {}
        """Per model, the newest sequence found that waits for approval (policy "ask")."""
        self.approved: dict[str, int] = self._load_approved()
        """Per model, the highest sequence approved here (persisted: a restart keeps the approval)."""
        svc.endpoint.register(UpdateApproval, self._approval)

    async def __aenter__(self) -> Self:
        """Open the direct links (if asked for) and announce them; without them chunks use the broker."""
        if not self.direct:
            return self
        links = DirectLinks(
            self.service.node, self.exchange.serve_direct, host=self.direct_host, port=self.direct_port,
            network=await self._own_network(), supervisor=self.supervision,
        )  # fmt: skip
        try:
            await links.__aenter__()
        except OSError as exc:
            log.warning(
                "no direct links on %s (%s); model updates go through the broker", self.direct_host, exc
            )
            await links.close()
            return self
        self._direct = self.exchange.direct = links
        if links.contact is not None:
            self.service.direct = links.contact
            with contextlib.suppress(HearthError):  # peers learn the contact now, not one interval later
                await self.service.endpoint.publish_presence()
        return self

    async def _own_network(self) -> Network | None:
        """The network peers' direct contacts must be on (mesh.direct.usable_hosts): that of the address
        we listen on, else of the one we reach the broker from; None (no direct asks) if neither is
        known."""
        address = self.direct_host
        try:
            if address is None or ipaddress.ip_address(address).is_unspecified:
                address = await asyncio.to_thread(local_address_towards, *self.service.config.mesh.host_port)
            return local_network(address)
        except (OSError, ValueError) as exc:
            log.warning("direct links ask nobody: this device's own network is unknown (%s)", exc)
            return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.service.direct = None
        self.exchange.direct = None
        if self._direct is not None:
            await self._direct.close()

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
        """Per model: installed and highest known sequence, and what is happening (for presence/CLI),
        with the highest sequence seeded here whole (the announcement peers act on).

        Never raises: presence is built from it, and part of it comes from peers (unverified claims).
        Each row is built on its own; one that does not validate is left out and counted (the
        supervisor's "model-updates" drops), and this device's other rows still go out."""
        offered: dict[str, int] = {}
        for holding in self.exchange.holdings.values():
            m = holding.manifest
            if len(holding.have) == len(m.chunks):
                offered[m.name] = max(offered.get(m.name, 0), m.sequence)
        installed = self.trusted.installed
        rows: dict[str, UpdateStatus] = {}

        def put(name: str, available: int, state: UpdateState, **more: Any) -> None:
            try:
                rows[name] = UpdateStatus(
                    name=name, installed=installed.get(name, 0), available=available, state=state,
                    offered=offered.get(name, 0), **more,
                )  # fmt: skip
            except ValidationError as exc:
                self.supervision.drop("model-updates", "UpdateStatus", exc, "left a model out of the status")

        for name, seq in installed.items():
            put(name, seq, "current")
        for name, seq in offered.items():
            if name not in rows:
                put(name, max(installed.get(name, 0), seq), "current")
        for outcome in self.outcomes:
            name = outcome.pack_id.partition("@")[0]
            put(
                name,
                max(installed.get(name, 0), outcome.sequence),
                outcome.state,
                detail=outcome.reason[:300],
            )
        for manifest, fraction in self.exchange.progress().values():
            put(manifest.name, manifest.sequence, "fetching", progress=round(fraction, 3))
        for name, sequence in self.awaiting.items():
            row = rows.get(name)
            if sequence > installed.get(name, 0) and (row is None or row.state != "fetching"):
                put(name, sequence, "awaiting-approval")
        with self.supervision.guard("model-updates", "left unverifiable offers out of the status"):
            wanted = self.wanted_names() if self.exchange.unverifiable else set()
            for name, (sequence, why) in self.exchange.unverifiable.items():
                if name not in wanted:  # a claim about a model this device does not run is not its news
                    continue
                row, have = rows.get(name), installed.get(name, 0)
                if (row is None and sequence > have) or (row is not None and row.state == "current"):
                    detail = f"a peer offers sequence {sequence} that does not verify: {why}"
                    put(name, have, "unverifiable", detail=detail[:300])
        return list(rows.values())[:16]

    def wanted_names(self) -> set[str]:
        """Models this device runs or holds (by name: what peers' presence announces)."""
        planned = {tp.chosen_id for tp in self.service.plan.tasks.values() if tp.chosen_id}
        names = {p.manifest.name for p in self.store.list()}
        return names | {pack_id.partition("@")[0] for pack_id in planned}

    def _heard(self, opened: Opened) -> None:
        """A peer's presence announces a model we run at a sequence above ours: a round now, not at
        the next interval. Each (peer, model, sequence) wakes us once, so an offer we refuse does not
        loop; the memory of those is bounded."""
        peer = self.service.endpoint.peers.get(opened.header.sender)
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

    def wanted(self, manifest: UpdateManifest) -> bool:
        """This device runs (or holds) that pack: its plan chose it, or it is installed here."""
        planned = {tp.chosen_id for tp in self.service.plan.tasks.values() if tp.chosen_id}
        installed = {p.pack_id for p in self.store.list()}
        return manifest.pack_id in planned | installed

    # -- updating ------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """A round at start, then every ``interval_s`` or as soon as a peer announces a newer pack;
        supervised: a round that fails unexpectedly is logged and counted, and the loop goes on after
        a backoff (one bad holding is dropped inside the round, without a restart)."""
        hooks = self.service.endpoint.presence_hooks
        hooks.append(self._heard)
        try:
            await self.supervision.supervise("model-updates", self._rounds)
        finally:
            with contextlib.suppress(ValueError):
                hooks.remove(self._heard)

    async def _rounds(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.check_once()
            except HearthError as exc:  # reported; the next round tries again
                log.warning("model update round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()

    async def check_once(self, only: set[str] | None = None, *, asked: bool = False) -> list[UpdateOutcome]:
        """One round: ask peers, fetch and activate every newer pack this device wants (of the models
        named in ``only``, if given). ``asked``: the user asked for this round here (`hearth models
        pull`), which approves what it finds when the policy waits for approval."""
        async with self._busy:
            if await self.seed_stored() and self.service.serve:  # newly published here: announce it
                with contextlib.suppress(HearthError):
                    await self.service.endpoint.publish_presence()
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
                    self._approve(manifest.name, manifest.sequence)
                if self.approval == "ask" and manifest.sequence > self.approved.get(manifest.name, 0):
                    if manifest.sequence > self.awaiting.get(manifest.name, 0):
                        log.info("%s sequence %d awaits approval", manifest.pack_id, manifest.sequence)
                        self.awaiting[manifest.name] = manifest.sequence
                    continue
                self.awaiting.pop(manifest.name, None)
                done.append(await self._install(manifest, envelope, holders))
            self.outcomes.extend(done)
            del self.outcomes[:-32]
            self.rounds += 1
            return done

    # -- approval ------------------------------------------------------------------------------------

    def _approval(self, sender: DeviceCertificate, msg: UpdateApproval) -> None:
        """A member approves an awaited sequence: only controllers may, and only what is awaited here."""
        if not (sender.admin or sender.device_class == "hub"):
            self.service.endpoint.dropped["Forbidden"] += 1
            log.warning("dropped an update approval from %s: only a hub-class or admin member may approve",
                        sender.name)  # fmt: skip
            return
        if self.awaiting.get(msg.name) != msg.sequence:
            log.info("ignored %s's approval of %s sequence %d: not awaiting it here", sender.name, msg.name,
                     msg.sequence)  # fmt: skip
            return
        log.info("%s approved %s sequence %d", sender.name, msg.name, msg.sequence)
        self._approve(msg.name, msg.sequence)
        self._wake.set()

    def _approve(self, name: str, sequence: int) -> None:
        if sequence <= self.approved.get(name, 0):
            return
        self.approved[name] = sequence
        if len(self.approved) > 256:  # bounded: keep the models this device runs
            wanted = self.wanted_names()
            self.approved = {n: s for n, s in self.approved.items() if n in wanted or n == name}
        path = self.updates.dir / "approved.json"
        with contextlib.suppress(OSError):  # an unsaved approval still holds until the agent restarts
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.approved, sort_keys=True))
            tmp.replace(path)

    def _load_approved(self) -> dict[str, int]:
        path = self.updates.dir / "approved.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s (%s): approvals start afresh", path, exc)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str) and type(v) is int and v > 0}

    async def _install(
        self, manifest: UpdateManifest, envelope: bytes, holders: dict[str, set[int]]
    ) -> UpdateOutcome:
        label = f"{manifest.pack_id} sequence {manifest.sequence}"
        log.info("fetching %s (%.1f MB) from %d peer(s)", label, manifest.total_size / 1e6, len(holders))
        fetch, staging = await self.exchange.fetch(manifest, envelope, holders)
        if fetch.state is not FetchState.DONE:  # staging kept: the next round resumes from it
            log.warning("gave up on %s: %s", label, fetch.reason)
            return UpdateOutcome(manifest.pack_id, manifest.sequence, "gave up", fetch.reason)
        svc = self.service
        result: ActivationResult = await asyncio.to_thread(
            activate, manifest, envelope, staging,
            store=self.store, updates=self.updates, trusted=self.trusted,
            identity=svc.state.identity.signing_key, device_id=svc.certificate.device_id,
        )  # fmt: skip
        if result.activated and result.pack is not None:
            if svc.agent is not None:
                svc.agent.models.retire(manifest.pack_id)
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
