"""The household a fuzz target attacks: a device under test assembled as the agent assembles it, an
honest hub, and a hostile member, on the in-memory mesh with real nodes, endpoints and crypto.

- ``dut`` (the fridge panel): a real `MeshService` (translation memory exchange, corrections sync,
  group-key rotation, all as `service.py` wires them) with a real `Updater` (update exchange, approvals
  awaited, its status in presence), connected to the simulator instead of a broker. Engines are stood
  in for (the targets are the mesh and its features, not the models): it translates by upper-casing,
  and its plan names the two published models without running them, so claims about them are its news
  and its own requests are routed to peers.
- ``honest`` (the hub, admin): a plain endpoint that probes the device under test, answers update
  queries with nothing, and whose standing there must never change. It authored a correction and a
  translation-memory entry the device holds, and published the pack the device seeds.
- ``mallory``: a household member (appliance, may request and serve translate, approved to correct
  translations) gone hostile. It seals
  whatever the fuzz target draws with its genuine keys, and answers the device's queries and requests
  with whatever the target says (`RawMember.on_message`), bypassing every check a well-behaved
  endpoint would make on its own output.
- ``ghost`` (a revoked member) and ``stranger`` (never a member): keys for forged frames.

`Rig.check` is the invariant after each input: no supervised loop restarted and nothing dropped as
unexpected, on the device under test and on the honest hub; the device's dispatch keeps up (a barrier
behind the input comes out within seconds); trusted state unchanged (see `Trusted`). `Rig.probe`, every
few inputs, proves the device still serves: the hub pings it and has it translate the sentence the
hub's correction covers, and a sentence nobody corrected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from nacl.signing import SigningKey

from benchmarks.rigs.meshkit import config as agent_config
from edge_agent.agent import Agent
from edge_agent.client.schemas import TranslateRequest, TranslateResult, TranslateStats
from edge_agent.config import AgentConfig
from edge_agent.errors import HearthError, NoLocalModelError, RecipientNotMemberError, TransportError
from edge_agent.hearth import agent_router
from edge_agent.mesh.assembly import build_member, build_node
from edge_agent.mesh.corrections import Correction, make_correction
from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Address, Channel, Transport
from edge_agent.mesh.memory import MemoryEntry, make_entry
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import (
    MESSAGE,
    Message,
    Offer,
    Presence,
    UpdateHoldings,
    UpdateQuery,
    encode,
)
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.mesh.transports.memory import MeshSimulator
from edge_agent.models.pack import PackManifest
from edge_agent.models.selection import Plan, TaskPlan
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.service import MeshService
from edge_agent.supervision import Supervisor
from edge_agent.sync.keys import UpdateKey, UpdateKeySet, sign_key_set
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.tasks import TASKS, DeviceClass, Task
from edge_agent.updates.ports import DeviceFacts, UpdateSettings
from edge_agent.updates.updater import Updater

__all__ = ["PAIR", "Broken", "CountErrors", "Pack", "RawMember", "Rig", "Trusted"]

PAIR = "en-pt"
CORRECTED = ("Turn off the oven.", "Desliga o forno.")
"""The sentence the honest hub corrected, and its correction (the probe asks for it)."""
REMEMBERED = ("Good morning.", "Bom dia.")
"""A translation-memory entry the honest hub produced."""
SETTLE_S = 10.0
"""Longest the device under test may take to take in one input (far above what any should need)."""
MAX_TASKS = 256
"""Background tasks the device under test may hold after an input settles (replies in flight)."""


class Broken(AssertionError):
    """An invariant failed: the input (or one just before it) broke the device under test."""


class _Models:
    used_mb = 0.0

    def retire(self, pack_id: str) -> None:
        """Nothing loaded, nothing to retire."""


class StandInAgent:
    """Stands in for `Agent` (no packs, no engines): translates by upper-casing, runs nothing else."""

    def __init__(self) -> None:
        self.models = _Models()
        self.translated = 0

    async def translate(self, request: TranslateRequest) -> TranslateResult:
        self.translated += 1
        out = [t.upper() for t in request.texts]
        stats = TranslateStats(sentences=len(out), source_tokens=0, target_tokens=0, total_ms=0.0)
        return TranslateResult(translations=out, pair=request.pair, model="stand-in@fp32", stats=stats)

    async def run(self, spec: Any, request: Any) -> AsyncGenerator[Any, None]:
        raise NoLocalModelError(f"the fuzz stand-in runs no {spec.name} model")
        yield  # pragma: no cover  (an async generator, like Agent.run)


@dataclass
class Pack:
    """A model pack on disk with its signed manifest."""

    manifest: UpdateManifest
    envelope: bytes
    directory: Path


@dataclass
class RawMember:
    """A member's keys and its own link to the simulator, without an endpoint's manners: it seals
    whatever it is given and hands every message it receives to ``on_message``."""

    name: str
    identity: DeviceIdentity
    certificate: DeviceCertificate
    node: MeshNode
    on_message: Callable[[Opened, Message], None] | None = None
    received: Counter[str] = field(default_factory=Counter)
    envelopes: list[int] = field(default_factory=lambda: [1])
    """What its advert says it speaks: v1 unless a target makes it a session speaker (`sessions`)."""
    _reader: asyncio.Task[None] | None = None
    _adverts: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.identity.device_id

    @property
    def transport(self) -> Transport:
        assert self.node.transport is not None, f"{self.name} is not connected"
        return self.node.transport

    async def connect(self, sim: MeshSimulator, *, advertise_every_s: float = 20.0) -> None:
        """Connect, and announce its genuine advert now and every ``advertise_every_s`` (as any member
        does: a device that stops announcing ages out of its peers' tables)."""
        transport = sim.connector(self.id).connect(None)
        await transport.open()
        self.node.transport = transport
        self._reader = asyncio.create_task(self._read(transport), name=f"{self.name}-reader")
        self._adverts = asyncio.create_task(self._advertise(advertise_every_s), name=f"{self.name}-adverts")

    async def _advertise(self, every_s: float) -> None:
        while True:
            await self.announce(encode(self.presence()))
            await asyncio.sleep(every_s)

    async def _read(self, transport: Transport) -> None:
        async for item in self.node.receive(transport):
            if isinstance(item, Opened):
                try:
                    msg = MESSAGE.validate_json(item.payload)
                except ValueError:
                    continue
                self.received[msg.type] += 1
                if self.on_message is not None:
                    self.on_message(item, msg)

    async def close(self) -> None:
        for task in (self._reader, self._adverts):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, HearthError):
                    await task
        if self.node.transport is not None:
            await self.node.transport.aclose()

    def presence(self, **changes: Any) -> Presence:
        """Its genuine advert (what it announced at start), with ``changes``."""
        advert = Presence(
            certificate=self.certificate,
            session=self.node.session,
            link=1,
            profile="fridge-panel",
            offers=[
                Offer(task="translate", pack="bergamot@int8", rate=500.0, first_ms=5.0, pairs=[PAIR]),
                Offer(task="embed", pack="minilm@int8", rate=500.0, first_ms=5.0),
            ],
            translation_memory=True,
            envelopes=self.envelopes,
            interval_s=60.0,
        )
        return advert.model_copy(update=changes) if changes else advert

    async def announce(self, payload: bytes) -> None:
        await self.node.announce(payload)

    async def send(self, to: str, channel: Channel, payload: bytes, session: str) -> None:
        """Seal ``payload`` (any bytes) for ``to``'s inbox and session, with real keys, and send it."""
        await self.node.send(to, channel, payload, session=session)


@dataclass(frozen=True)
class Trusted:
    """What the device under test trusts, as a value: equal before and after any input, except where
    the input was allowed to change it (the hostile member's own standing is left out: its replay
    window and peer entry move with every message it sends, as they should)."""

    certificates: tuple[tuple[str, int, str], ...]
    crl: tuple[int, frozenset[str]]
    group: tuple[int, bytes, tuple[tuple[int, bytes], ...]]
    opener_keys: tuple[tuple[int, bytes], ...]
    honest_peer: tuple[str, str, str] | None
    """(certificate signature, session, advert JSON) of the honest hub in the peer table."""
    update_keys: tuple[int, tuple[str, ...]] | None
    installed: tuple[tuple[str, int], ...]
    held: tuple[tuple[str, frozenset[int]], ...]
    approved: tuple[tuple[str, int], ...]
    honest_corrections: tuple[str, ...]
    honest_memory: str | None
    honest_sessions: tuple[tuple[int, int, str], ...] = ()
    """(our index, its index, its run) of each forward-secret session with the honest hub."""


def _diff(before: Trusted, after: Trusted) -> list[str]:
    return [
        f"{name}: {getattr(before, name)!r:.300} -> {getattr(after, name)!r:.300}"
        for name in Trusted.__dataclass_fields__
        if getattr(before, name) != getattr(after, name)
    ]


class _Household:
    """The household on disk: the hub's root, and one state directory per device (as pairing leaves it)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hub_state = HouseholdState(tmp / "hub")
        self.hub_state.init_household(
            name="hub", profile="hub", requests=list(TASKS), serves=["translate", "embed"], device_class="hub"
        )

    def member(
        self,
        name: str,
        profile: str,
        *,
        serves: list[Task],
        device_class: DeviceClass,
        may_correct: bool = False,
    ) -> HouseholdState:
        state = HouseholdState(self.tmp / name)
        root, _ = self.hub_state.load_root()
        cert = root.issue(
            state.identity,
            name=name,
            profile=profile,
            requests=list(TASKS),
            serves=serves,
            device_class=device_class,
            may_correct=may_correct,
        )
        self.hub_state.record_issued(root, cert)
        hub = self.hub_state.load()
        state.save(
            HouseholdFile(
                root_key=hub.root_key,
                certificate=cert,
                crl=hub.crl,
                group_key=hub.group_key,
                group_epoch=hub.group_epoch,
                past_group_keys=hub.past_group_keys,
                retired_at=hub.retired_at,
                peers=[hub.certificate, *hub.peers],
            )
        )
        return state


def _publish(tmp: Path, name: str, sequence: int, household_id: str, key: SigningKey) -> Pack:
    """A small pack (4 chunks of 16 KiB), its manifest signed by the household's update key."""
    directory = tmp / f"pack-{name}-{sequence}"
    directory.mkdir()
    files = {"pack.json": b'{"name": "%s"}' % name.encode(), "model.onnx": bytes(range(256)) * 200}
    for path, data in files.items():
        (directory / path).write_bytes(data)
    now = datetime.now(UTC)
    manifest = build_manifest(
        directory,
        list(files),
        household_id=household_id,
        name=name,
        pack_id=f"{name}@int8",
        task="embed",
        sequence=sequence,
        device_classes=["appliance"],
        issued_at=now,
        expires_at=now + timedelta(days=30),
        chunk_size=16 << 10,
        publisher="hub",
    )
    return Pack(manifest, sign_manifest(manifest, key), directory)


class Rig:
    """The household on the in-memory mesh (see the module docstring). An async context manager."""

    def __init__(self, tmp: Path, *, probe_timeout_s: float = 10.0) -> None:
        self.tmp = tmp
        self.probe_timeout_s = probe_timeout_s
        self._stack = contextlib.AsyncExitStack()
        home = _Household(tmp)
        hub_data = home.hub_state.load()
        self.household_id = hub_data.certificate.household_id
        self.sim = MeshSimulator(self.household_id)
        # The ghost: paired, then revoked (its keys still sign; the household refuses them).
        ghost = home.member("ghost", "phone", serves=[], device_class="appliance")
        self.ghost = ghost.identity
        home.hub_state.revoke([self.ghost.device_id])
        self.stranger = DeviceIdentity.generate()
        dut_state = home.member(
            "fridge", "fridge-panel", serves=["translate", "embed"], device_class="appliance"
        )
        # Mallory was approved to correct translations (an approved member gone hostile reaches the most).
        mal_state = home.member(
            "mallory",
            "fridge-panel",
            serves=["translate", "embed"],
            device_class="appliance",
            may_correct=True,
        )
        # The household file of each: certificates of everyone (hub's copy of the roster).
        roster = home.hub_state.load()
        for state in (dut_state, mal_state):
            data = state.load()
            state.save(
                data.model_copy(update={"peers": [roster.certificate, *roster.peers], "crl": roster.crl})
            )
        self.root_key = SigningKey(bytes.fromhex(home.hub_state.load_root()[1].seed))
        # The hub's update key, its key set signed by the household root, and the packs it published.
        self.update_key = SigningKey.generate()
        now = datetime.now(UTC)
        self.key_set = UpdateKeySet(
            household_id=self.household_id,
            version=1,
            threshold=1,
            keys=[UpdateKey.of(self.update_key.verify_key, "hub")],
            issued_at=now,
            expires_at=now + timedelta(days=365),
        )
        self.key_set_envelope = sign_key_set(self.key_set, self.root_key)
        self.seeded = _publish(tmp, "demo", 1, self.household_id, self.update_key)
        """A pack the device under test holds and serves."""
        self.wanted = _publish(tmp, "other", 2, self.household_id, self.update_key)
        """A pack the device does not hold (the chunks target has it fetch this one)."""

        # The device under test, assembled as the agent assembles it.
        cfg: AgentConfig = agent_config("fridge", 1, "fridge-panel", coalesce_ms=0)
        cfg = cfg.model_copy(
            update={
                "mesh": cfg.mesh.model_copy(update={"presence_interval_s": 5.0, "self_benchmark": False}),
                "routing": cfg.routing.model_copy(update={"max_attempts": 1, "stall_timeout_s": 5.0}),
                "updates": cfg.updates.model_copy(update={"approval": "ask", "direct": False}),
            }
        )
        self.agent = StandInAgent()
        # Its plan runs both published models (so peers' claims about them are its news), on engines
        # it does not have here (so routing sends its own requests to peers).
        tasks: tuple[tuple[Task, Pack], ...] = (("generate", self.seeded), ("transcribe", self.wanted))
        runs: dict[str, TaskPlan] = {
            task: TaskPlan(task, "unavailable", cast(PackManifest, pack.manifest), "fuzz stand-in", slot=task)
            for task, pack in tasks
        }
        plan = Plan(profile_id="fridge-panel", budget_mb=0, tasks=runs)
        self.dut = MeshService(
            cfg,
            load_profile("fridge-panel"),
            plan,
            dut_state.dir,
            router=agent_router(cfg, plan, cast(Agent, self.agent)),
            agent=cast(Agent, self.agent),
            supervisor=Supervisor(),
            connector=self.sim.connector(dut_state.identity.device_id),
        )
        dut = self.dut
        facts = DeviceFacts.of(dut.state, dut.membership, dut.certificate)
        self.updater = Updater(
            dut.endpoint, PackStore(tmp / "store"), device=facts, plan=dut.plan,
            settings=UpdateSettings(interval_s=3600.0, approval="ask"), serves=dut.serve,
            busy=dut.inference_busy, retire=self.agent.models.retire, supervisor=dut.supervisor,
        )  # fmt: skip
        trusted = self.updater.trusted
        trusted.update_key_set(self.key_set_envelope)
        self.updater.updates.save_key_set(self.key_set_envelope)
        self.updater.exchange.hold(self.seeded.manifest, self.seeded.envelope, self.seeded.directory)

        # The honest hub: a plain endpoint with the hub's keys.
        settings = MeshSettings(presence_interval_s=30.0, coalesce_ms=0)
        self.honest_certificate = hub_data.certificate
        hub = build_member(
            home.hub_state,
            self.sim.connector(self.honest_certificate.device_id),
            settings=settings,
            supervisor=Supervisor(),
            presence=self._honest_presence,
        )
        hub_node, self.honest = hub.node, hub.endpoint
        self.honest.register(UpdateQuery, self._honest_holdings)
        self.honest_correction: Correction = make_correction(
            home.hub_state.identity.signing_key, hub_node.device_id, PAIR, *CORRECTED
        )
        self.honest_entry: MemoryEntry = make_entry(
            home.hub_state.identity.signing_key, hub_node.device_id, PAIR, *REMEMBERED, "bergamot@int8"
        )
        self.dut.corrections.check(self.honest_correction)
        self.dut.corrections.add(self.honest_correction)
        assert self.dut.memory is not None
        self.dut.memory.put(self.honest_entry)

        # The hostile member.
        mal_settings = MeshSettings(presence_interval_s=30.0, coalesce_ms=0)
        self.mallory = RawMember(
            "mallory",
            mal_state.identity,
            mal_state.load().certificate,
            build_node(mal_state, mal_settings.limits),
        )
        self.mallory.on_message = self.mallory_default
        self.probes = 0
        self.errors: Counter[str] = Counter()
        """Log records at ERROR or above from the agent's code (a traceback nobody planned for)."""
        self._trusted: Trusted | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._handler = CountErrors(self.errors)

    # -- lifecycle ------------------------------------------------------------------------------------

    def _honest_presence(self) -> Presence:
        return Presence(
            certificate=self.honest_certificate,
            session=self.honest.node.session,
            link=self.honest.link,
            profile="hub",
            interval_s=60.0,
        )

    def mallory_default(self, opened: Opened, msg: Message) -> None:
        """What mallory does when no target answers for it: update queries get an empty answer (so the
        device's update rounds end at once), the rest is ignored."""
        if isinstance(msg, UpdateQuery):
            reply = encode(UpdateHoldings(nonce=msg.nonce))
            self._soon(self.mallory.send(self.dut_id, Channel.RESPONSES, reply, msg.reply_session))

    def _honest_holdings(self, requester: DeviceCertificate, query: UpdateQuery) -> None:
        """The hub holds nothing to share: it says so at once (the device's discovery ends on it)."""
        reply = UpdateHoldings(nonce=query.nonce)
        self._soon(
            self.honest.send(requester.device_id, Channel.RESPONSES, reply, session=query.reply_session)
        )

    def _soon(self, sending: Coroutine[Any, Any, None]) -> None:
        async def send() -> None:
            with contextlib.suppress(TransportError, RecipientNotMemberError):
                await sending

        task = asyncio.create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def __aenter__(self) -> Self:
        logging.getLogger("edge_agent").addHandler(self._handler)
        try:
            await self._stack.enter_async_context(self.honest)
            await self._stack.enter_async_context(self.updater)  # in the device's first advert already
            await self._stack.enter_async_context(self.dut)
            await self.mallory.connect(self.sim)
            self._stack.push_async_callback(self.mallory.close)
            updates = asyncio.create_task(
                self.dut.supervisor.supervise("model-updates", self.updater.run_forever), name="model-updates"
            )
            self._stack.push_async_callback(self._cancel, updates)
            ready = await self.dut.endpoint.wait_until(
                lambda: (
                    all(self.dut.endpoint.peers.get(i) for i in (self.honest.device_id, self.mallory.id))
                    and self.honest.peers.get(self.dut_id) is not None
                ),
                10.0,
            )
            if not ready:
                raise RuntimeError("the fuzz household did not come up within 10 s")
            async with asyncio.timeout(10.0):
                while self.updater.rounds < 1:  # the update round at start is over: the device is idle
                    await asyncio.sleep(0.01)
            await self.settle()
            self.snapshot()
        except BaseException:
            await self.aclose()
            raise
        return self

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            logging.getLogger("edge_agent").removeHandler(self._handler)

    # -- what targets use -----------------------------------------------------------------------------

    @property
    def dut_id(self) -> str:
        return self.dut.certificate.device_id

    @property
    def dut_session(self) -> str:
        return self.dut.node.session

    def inbox(self, channel: Channel, device: str | None = None) -> Address:
        return Address(self.household_id, device or self.dut_id, channel)

    def topic(self, channel: Channel) -> str:
        """What a direct frame to the device under test must be sealed for."""
        return f"{self.inbox(channel)}#{self.dut_session}"

    async def settle(self) -> None:
        """Until the device under test has taken in everything sent to it so far (a barrier behind it in
        its inbox comes out), and the replies it spawned went out and were read."""
        transport = self.dut.node.transport
        if transport is None or not await transport.caught_up(SETTLE_S):
            raise Broken(f"the device under test did not take in its input within {SETTLE_S:g} s")
        for _ in range(3):
            await asyncio.sleep(0)
        for member in (self.mallory.transport, self.honest.node.transport):
            if member is not None:
                await member.caught_up(SETTLE_S)
        self.sim.wiretap.frames.clear()  # 200,000 inputs of frames would otherwise stay in memory

    def snapshot(self) -> Trusted:
        """Take the trusted state as the reference the next inputs are compared with."""
        self._trusted = self.trusted()
        return self._trusted

    def trusted(self) -> Trusted:
        dut = self.dut
        membership, node, ring = dut.membership, dut.node, dut.node.group
        honest_id = self.honest.device_id
        peer = dut.endpoint.peers.get(honest_id)
        key_set = self.updater.trusted.key_set
        honest_memory = None
        if dut.memory is not None and (entry := dut.memory.get(PAIR, REMEMBERED[0])) is not None:
            honest_memory = entry.model_dump_json()
        return Trusted(
            certificates=tuple(sorted((d, c.serial, c.signature) for d, c in membership.certs.items())),
            crl=(membership.crl_version, membership.revoked),
            group=(ring.epoch, ring.key, tuple(sorted((e, k) for e, (k, _) in ring.past.items()))),
            opener_keys=tuple(sorted(node.opener.group_keys.items())),
            honest_peer=(
                (peer.certificate.signature, peer.session, peer.presence.model_dump_json()) if peer else None
            ),
            update_keys=(key_set.version, tuple(sorted(key_set.verify_keys))) if key_set else None,
            installed=tuple(sorted(self.updater.trusted.installed.items())),
            held=tuple(
                sorted(
                    (c, frozenset(h.have))
                    for c, h in self.updater.exchange.holdings.items()
                    if c != self.wanted.manifest.content_id  # the chunks target fetches that one
                )
            ),
            approved=tuple(sorted(self.updater.approved.items())),
            honest_corrections=tuple(
                sorted(r.id for r in dut.corrections.records.values() if r.author == honest_id)
            ),
            honest_memory=honest_memory,
            honest_sessions=tuple(
                sorted((s.index, s.peer_index, s.peer_run) for s in node.sessions.sessions_with(honest_id))
            )
            if node.sessions is not None
            else (),
        )

    def check(self) -> None:
        """The invariants after one input (see the module docstring). Raises Broken saying which."""
        problems: list[str] = []
        for who, supervisor in (
            ("device under test", self.dut.supervisor),
            ("honest hub", self.honest.supervisor),
        ):
            for loop in supervisor.report().loops:
                if loop.restarts or loop.dropped:
                    problems.append(
                        f"{who}: {loop.name} restarted {loop.restarts} time(s), dropped {dict(loop.dropped)} "
                        f"as unexpected (last error: {loop.last_error})"
                    )
        if self.errors:
            problems.append(f"errors logged: {dict(self.errors)}")
        if self.dut.endpoint.state.value != "open" or not self.dut.endpoint.connected.is_set():
            problems.append(
                f"the device under test is {self.dut.endpoint.state.value}, connected: "
                f"{self.dut.endpoint.connected.is_set()}"
            )
        if len(self.dut.endpoint.lifetime.tasks) > MAX_TASKS:
            problems.append(f"{len(self.dut.endpoint.lifetime.tasks)} background tasks left running")
        if self._trusted is not None:
            problems += _diff(self._trusted, self.trusted())
        # The hub's replay windows here move with the hub's own messages only: never past its counter
        # (an input that pushed them there would lock the hub out of this device).
        upcoming = self.honest.node.counter.upcoming
        for name, guard in (
            ("direct", self.dut.node.opener.replay),
            ("presence", self.dut.node.presence_replay),
        ):
            window = guard.window(self.honest.device_id)
            if window is not None and window[0] >= upcoming:
                problems.append(f"the hub's {name} replay window here reached {window[0]}, past its counter")
        if problems:
            raise Broken("; ".join(problems))

    async def probe(self) -> None:
        """The device under test still serves: it answers the hub's ping, and translates for it (the
        corrected sentence as the hub's correction says, another through its engine)."""
        self.probes += 1
        honest, dut_id = self.honest, self.dut_id
        peer = honest.peers.get(dut_id)
        if peer is None:
            raise Broken("the honest hub no longer sees the device under test")
        if await honest.ping(peer, timeout=self.probe_timeout_s) is None:
            raise Broken("the device under test does not answer a ping")
        body = TranslateRequest(texts=[CORRECTED[0], "Open the door."], source="en", target="pt")
        chunks = []
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                async for chunk in honest.stream(
                    peer, "translate", body.model_dump(), deadline_s=5, stall_s=5
                ):
                    chunks.append(chunk)
        except (HearthError, TimeoutError) as exc:
            raise Broken(
                f"the device under test does not serve a translation: {type(exc).__name__}: {exc}"
            ) from None
        result = TranslateResult.model_validate(chunks[-1].body)
        active = self.dut.corrections.active_for(PAIR, here=False).get(CORRECTED[0])
        expected = [active.target if active else CORRECTED[0].upper(), "OPEN THE DOOR."]
        if result.translations != expected:
            raise Broken(f"the device under test translated {result.translations}, expected {expected}")
        # The probe moved the hub's standing (its replay window, its advert): the new reference.
        self.snapshot()

    def reset_hostile_standing(self) -> None:
        """Forgive mallory (routing bans it after each failure it causes): later inputs reach the same
        code as the first. Only mallory's own entry changes."""
        peer = self.dut.endpoint.peers.get(self.mallory.id)
        if peer is not None:
            peer.banned_until, peer.failures = 0.0, 0

    def wipe_staging(self, pack: Pack) -> None:
        shutil.rmtree(self.updater.exchange.staging_root / pack.manifest.content_id, ignore_errors=True)


class CountErrors(logging.Handler):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__(logging.ERROR)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}: {record.getMessage()[:120]}"] += 1
