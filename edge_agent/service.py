"""An agent on the household mesh: serves its local models to peers and routes its own requests.

The agent's mesh part, built by the composition root (`edge_agent.hearth`): its endpoint and features
come from `mesh.assembly` (as every device's do), the Agent runs models, and the root's one Router (built
over this endpoint by the factory the root hands in) decides where each request runs. Also used by
one-shot CLI commands (`hearth chat`, `hearth peers`) as a non-serving client of the same household.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from types import TracebackType

from edge_agent.agent import Agent
from edge_agent.client.schemas import TranslateRequest, TranslateResult, TranslateStats
from edge_agent.config import AgentConfig, RoutingSection
from edge_agent.connect import household_connector
from edge_agent.engines.sentences import split_sentences
from edge_agent.mesh.assembly import ConnectorFor, Features, MemberKeys, build_member, health_of
from edge_agent.mesh.broker import EmbeddedBroker
from edge_agent.mesh.corrections import Corrections
from edge_agent.mesh.endpoint import MeshEndpoint
from edge_agent.mesh.features.corrections import CorrectionSync
from edge_agent.mesh.features.group_keys import GroupKeyRotation
from edge_agent.mesh.features.translation_memory import MemoryExchange
from edge_agent.mesh.interfaces import Connector
from edge_agent.mesh.memory import Audience, TranslationMemory, fits, make_entry, normalize
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import (
    CoapContact,
    Offer,
    Presence,
    encode,
)
from edge_agent.mesh.state import HouseholdState
from edge_agent.models.selection import Plan
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.router import Router
from edge_agent.status import DeviceStatus, device_status
from edge_agent.supervision import Supervisor
from edge_agent.task_specs import REGISTRY, PeerServer, ServeHook
from edge_agent.tasks import Task

Compute = Callable[[TranslateRequest], Awaitable[tuple[TranslateResult, str]]]

log = logging.getLogger(__name__)


def text_audience(policy: RoutingSection) -> Audience:
    """The device classes routing policy lets see this device's text to translate (None: any member;
    empty: none), for memory lookups and answers as for offloading."""
    if policy.mode == "local-only" or "translate" in policy.never_offload:
        return frozenset()
    return frozenset(policy.peer_classes) if policy.peer_classes else None


RouterFactory = Callable[[MeshEndpoint, dict[Task, Offer]], Router]
"""Builds the one router of the agent (the root's) over this device's endpoint and its own offers."""


class MeshService:
    """The agent's side of the mesh: its endpoint and features, presence, serving peers, translation
    through the household's corrections and memory. ``router`` builds the agent's router (the root
    decides how it routes; the service only hands over the endpoint it built)."""

    def __init__(
        self,
        config: AgentConfig,
        profile: FirmwareProfile,
        plan: Plan,
        home: Path,
        *,
        router: RouterFactory,
        agent: Agent | None = None,
        serve: bool = True,
        client_id_suffix: str = "",
        supervisor: Supervisor | None = None,
        connector: Connector | ConnectorFor | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """``connector``: how to reach the household (default: the [mesh] broker's, as a member)."""
        self.config = config
        self.connect_timeout_s = connect_timeout_s
        self.supervisor = supervisor or Supervisor()
        self.profile = profile
        self.plan = plan
        self.agent = agent
        self.serve = serve and agent is not None
        self.state = HouseholdState(home)
        keys = MemberKeys.load(self.state)
        self.membership, self.certificate = keys.membership, keys.certificate
        self.membership.on_revoked.append(self._persist_revocations)
        self.offers: dict[Task, Offer] = {}
        self.broker: EmbeddedBroker | None = None
        if connector is None:
            connector = household_connector(
                config.mesh,
                self.state.dir,
                household=self.membership.household_id,
                device=self.certificate.device_id,
                # A random tail: a client id known to others (device ids are in every topic) would let
                # any client, even an anonymous pairing one, take our session over at the broker.
                client_id=f"{self.certificate.device_id}{client_id_suffix}-{secrets.token_hex(4)}",
                one_shot=not self.serve,
            )
        tcfg = config.translate
        self.memory: TranslationMemory | None = None
        if tcfg.shared_memory and tcfg.memory_entries > 0:
            self.memory = TranslationMemory(
                max_entries=tcfg.memory_entries, max_age_s=tcfg.memory_max_age_days * 86400
            )
        self.corrections = Corrections(self.membership.member, self.state.dir / "corrections.json")
        """Users' corrections of translations, shared by the household; they beat any model or cache."""
        self.serve_hooks: dict[Task, ServeHook] = {"translate": self._serve_translate}
        """Task-specific serving: a peer's translations go through the household memory too."""
        self._handle = PeerServer(agent, self.serve_hooks) if agent is not None else None
        """The endpoint's handler: each peer's request validated once, then run on the agent (or a hook)."""
        features = Features(group_keys=True, on_group_key=self._save_group_key, corrections=self.corrections,
                            memory=self.memory)  # fmt: skip
        parts = build_member(
            keys,
            connector,
            settings=config.mesh.settings(),
            supervisor=self.supervisor,
            presence=self._advert_base if self.serve else None,
            handler=self._handle if self.serve else None,
            features=features,
        )
        self.node, self.endpoint = parts.node, parts.endpoint
        self.coap = parts.coap
        """The CoAP side, when `[mesh] transports` includes it."""
        assert parts.rotation is not None and parts.corrections is not None
        self.rotation: GroupKeyRotation = parts.rotation
        self.exchange: MemoryExchange | None = parts.memory
        self.correction_sync: CorrectionSync = parts.corrections
        self.router = router(self.endpoint, self.offers)

    def coap_contact(self) -> CoapContact | None:
        """Where this device answers CoAP (None: not a CoAP member, or not bound yet)."""
        return self.coap.contact() if self.coap is not None else None

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> MeshService:
        try:
            if self.config.mesh.embedded_broker:
                self.broker = EmbeddedBroker(*self.config.mesh.host_port)
                await self.broker.start()
            if self.serve and self.config.mesh.self_benchmark:
                await self.self_benchmark()
            await self.endpoint.__aenter__()
            await self.endpoint.wait_connected(self.connect_timeout_s)
            if not self.serve:
                await self._introduce_client()
        except BaseException:  # stop what was started: the endpoint's loops, the embedded broker
            await self._stop(clean=False)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self, *, clean: bool = True) -> None:
        try:
            await self.endpoint.close(clean=clean)
            if clean:
                self.state.remember(self.membership)
        finally:
            if self.broker is not None:
                await self.broker.stop()

    def _persist_revocations(self, devices: frozenset[str]) -> None:
        """A newer CRL revoking anyone (from a peer's presence, or the hub's own state) is saved at
        once, atomically, not at a clean exit: an agent killed later still refuses those devices."""
        with self.supervisor.guard("mesh-state", "could not save a newer revocation list"):
            self.state.remember(self.membership)

    async def _introduce_client(self) -> None:
        """A one-shot client (no will, no retained advert) sends one presence so peers learn its
        certificate, unless this device's own agent is already advertising it."""
        if not await self.endpoint.caught_up(5.0):
            log.debug("the presence board was not read within 5 s; introducing this client anyway")
        if not self.endpoint.own_presence_seen:
            await self.node.announce(encode(self.endpoint.advert(self._presence_message())))

    async def wait_for_peers(self, task: Task, timeout: float) -> None:
        """Wait until some peer offers ``task`` (or ``timeout``), then measure RTT to the candidates."""

        def offered() -> bool:
            return any(p.offer(task) for p in self.endpoint.known())

        if not offered():  # no waiting (and no waiter) when a peer already offers it
            await self.endpoint.wait_until(offered, timeout)
        await asyncio.gather(*(self.endpoint.ping(p) for p in self.endpoint.known() if p.offer(task)))

    # -- presence -------------------------------------------------------------------------------------

    def _presence_message(self) -> Presence:
        """This device's advert; the features add their own fields (memory, corrections' digest)."""
        status = self.status()
        return Presence(
            certificate=self.certificate,
            crl=self.membership.crl,
            session=self.node.session,
            link=self.endpoint.link,
            profile=self.profile.id,
            offers=[o for t, o in self.offers.items() if t in self.certificate.serves] if self.serve else [],
            queue_depth=status.queue_depth,
            free_model_ram_mb=status.free_model_ram_mb,
            served=status.served,
            offloaded=status.offloaded,
            health=health_of(self.supervisor),
            interval_s=self.config.mesh.presence_interval_s,
        )

    def status(self) -> DeviceStatus:
        """This device's load right now (presence, Home Assistant discovery)."""
        models = self.agent.models if self.agent is not None else None
        return device_status(self.profile, models, self.router, self.endpoint, self.offers)

    def inference_busy(self) -> bool:
        """Inference in flight here: serving a request, running our own, or waiting for a peer's
        answer (model transfers yield while it is)."""
        return bool(self.endpoint.queue_depth or self.router.local_in_flight or self.endpoint.streams_open)

    def presence(self) -> Presence:
        """This device's advert as peers get it, with what its parts contribute through the endpoint
        (model updates: their rows and direct contact)."""
        return self.endpoint.advert(self._advert_base())

    def _advert_base(self) -> Presence:
        """What the endpoint adds those contributions to, each advert."""
        self._refresh_household()
        return self._presence_message()

    def _refresh_household(self) -> None:
        """Pick up a revocation made by `hearth household revoke` while we run: the new CRL, and on
        the hub the rotated group key, which it then seals to every remaining member."""
        try:
            data = self.state.load()
        except Exception:  # a half-written file is retried next interval
            return
        if data.crl.version > self.membership.crl_version:
            self.membership.apply_revocations(data.crl)
        if self.node.use_group_key(bytes.fromhex(data.group_key), data.group_epoch):
            log.info("household group key rotated to epoch %d", data.group_epoch)
            self.rotation.distribute()

    def _save_group_key(self, key: bytes, epoch: int) -> None:
        self.state.save(self.state.load().with_group_key(key, epoch).with_past_keys(self.node.group))

    async def self_benchmark(self) -> None:
        """Measure each local task, so routing (ours, and peers' for what we serve) uses real speeds."""
        assert self.agent is not None
        agent = self.agent
        for tp in list(self.plan.tasks.values()):
            task, spec = tp.task, REGISTRY.get(tp.task)
            if tp.mode != "local" or tp.chosen is None or spec is None:
                continue
            if tp.pair and task in self.offers:  # one offer lists every pair; its speed is the first's
                continue
            t0 = time.perf_counter()
            speed = await spec.benchmark(functools.partial(spec.run_here, agent), tp.pair)
            self.offers[task] = Offer(
                task=task,
                pack=tp.chosen.pack_id,
                rate=speed.rate,
                first_ms=speed.first_ms,
                pairs=self.plan.pairs(task),
            )
            log.info("self-benchmark %s: %s (%.1f s)", task, self.offers[task], time.perf_counter() - t0)

    # -- translation ----------------------------------------------------------------------------------

    async def translate(self, request: TranslateRequest) -> tuple[TranslateResult, str]:
        """Translate with the household's corrections and memory first (ours, then peers'), the router
        for the rest; returns (result, who served the computed part)."""
        return await self.translate_with_memory(request, self.router.translate, own=True)

    async def _translate_here(self, request: TranslateRequest) -> tuple[TranslateResult, str]:
        assert self.agent is not None
        return await self.agent.translate(request), f"{self.config.agent.name} (local)"

    async def translate_with_memory(
        self, request: TranslateRequest, compute: Compute, *, own: bool
    ) -> tuple[TranslateResult, str]:
        """``own``: a request of this device's (its declines and routing policy apply, peers' memories
        are asked); else a peer's, served here (the household's corrections unless it applied them),
        already validated where it entered (`task_specs.serve`)."""
        if own:  # this device's own request enters here, before any memory lookup leaves the device
            request.validate_text()
        pair = request.pair
        audience = text_audience(self.config.routing) if own else None
        if own:  # we apply the corrections; a server keeps our sentences only if anyone may see them
            shared = self.memory is not None and audience is None
            outgoing = {"apply_corrections": False, "remember": request.remember and shared}
            corrected = self.corrections.active_for(pair, here=True)
        else:
            outgoing = {}
            corrected = self.corrections.active_for(pair, here=False) if request.apply_corrections else {}
        if self.memory is None and not corrected:
            return await compute(request.model_copy(update=outgoing))
        t0 = time.perf_counter()
        segmented = [split_sentences(t) for t in request.texts]
        normalized = [[normalize(s) for s in seg.sentences] for seg in segmented]
        answers: dict[str, str] = {}
        wanted: dict[str, str] = {}  # digest -> sentence, for peers
        sentences = {n for ns in normalized for n in ns if n}
        for sentence in sentences:  # a user's correction first: it beats any model and any cache
            if (record := corrected.get(sentence)) is not None:
                answers[sentence] = record.target
        fixed = set(answers)
        for sentence in sentences - fixed if self.memory is not None else ():
            assert self.memory is not None
            entry = self.memory.get(pair, sentence)
            if entry is not None:
                answers[sentence] = entry.translation
            else:
                wanted[self.memory.key(pair, sentence)] = sentence
        lookup_s = self.config.translate.memory_lookup_ms / 1000
        if own and wanted and lookup_s > 0 and self.exchange is not None and self.memory is not None:
            found = await self.exchange.ask(pair, wanted, lookup_s, allowed=self._may_see_text)
            for entry in found.values():
                answers[entry.source] = entry.translation
                self.memory.put(entry, audience)
        missing = sorted({n for ns in normalized for n in ns if n and n not in answers})
        source = "translation memory" if sentences - fixed else "household correction"
        served, model, counts = source, source, (0, 0)
        if missing:
            computed, served = await compute(request.model_copy(update={"texts": missing} | outgoing))
            model, counts = computed.model, (computed.stats.source_tokens, computed.stats.target_tokens)
            key, me = self.state.identity.signing_key, self.certificate.device_id
            for sentence, translation in zip(missing, computed.translations, strict=True):
                answers[sentence] = translation
                if self.memory is not None and request.remember and fits(sentence, translation):
                    self.memory.put(make_entry(key, me, pair, sentence, translation, model), audience)
        translations = [
            seg.join([answers.get(n, "") if n else "" for n in ns])
            for seg, ns in zip(segmented, normalized, strict=True)
        ]
        done = [n for ns in normalized for n in ns if n]
        stats = TranslateStats(
            sentences=len(done),
            source_tokens=counts[0],
            target_tokens=counts[1],
            total_ms=(time.perf_counter() - t0) * 1000,
            cached=sum(1 for n in done if n not in missing and n not in fixed),
            corrected=sum(1 for n in done if n in fixed),
        )
        return TranslateResult(translations=translations, pair=pair, model=model, stats=stats), served

    def _may_see_text(self, peer: Peer) -> bool:
        """Routing policy decides who may see our sentences, for memory lookups as for translation."""
        audience = text_audience(self.config.routing)
        return audience is None or peer.device_class in audience

    # -- serving --------------------------------------------------------------------------------------

    async def _serve_translate(self, request: TranslateRequest) -> AsyncGenerator[TranslateResult, None]:
        """Our memory first (no peer lookups while serving one), the engine for the rest."""
        translated, _ = await self.translate_with_memory(request, self._translate_here, own=False)
        yield translated
