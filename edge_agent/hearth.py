"""The composition root: one object owns an agent's life, and every caller goes through it.

`Hearth` assembles the engines (`Agent`), and, when the device is a paired mesh member, the mesh
(`MeshService`: endpoint, router, translation memory, presence) under the lock that makes this process
the only user of the device's mesh state; a serving agent also opens its owner-only local socket
(`local_api`), through which CLI commands reach it. Callers (CLI, demo, benchmarks, tests, and later
HTTP and Wyoming) use only `generate`, `embed`, `translate`, `transcribe` and `peers`, whatever runs where.

Lifecycle: an async context manager with a state enum and one TaskGroup; shutdown is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from edge_agent.agent import Agent
from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    TranscribeRequest,
    TranscribeResult,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.config import AgentConfig
from edge_agent.errors import HearthError
from edge_agent.facade import PeerReport, PeersReport
from edge_agent.mesh.files import StateLock
from edge_agent.mesh.state import HouseholdState, state_dir_for
from edge_agent.models.selection import Plan
from edge_agent.models.store import PackStore
from edge_agent.paths import hearth_home
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.router import RoutedStream, Router
from edge_agent.supervision import Supervisor
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.discovery.advertiser import HouseholdAdvertiser
    from edge_agent.engines.manager import ModelManager
    from edge_agent.ha_bridge import BridgeReply
    from edge_agent.ha_discovery import DiscoveryPublisher
    from edge_agent.mesh.corrections import Correction
    from edge_agent.mesh.protocol import UpdateStatus
    from edge_agent.updater import UpdateOutcome
    from edge_agent.voice.pipeline import VoicePipeline
    from edge_agent.voice.transcript import TranscriptPiece
    from edge_agent.voice.trust import ActionTranscriber
    from edge_agent.voice.wyoming_server import WyomingServer

log = logging.getLogger(__name__)

__all__ = ["SOCKET_NAME", "Hearth", "HearthState", "PeerReport", "PeersReport"]

SOCKET_NAME = "agent.sock"
SHUTDOWN_S = 20.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


class HearthState(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


def mesh_state_dir(config: AgentConfig) -> Path:
    """Where this device's mesh keys and household state live (``[mesh] state_dir`` or <home>/mesh)."""
    return state_dir_for(config.mesh.state_dir, hearth_home())


class Hearth:
    def __init__(
        self,
        config: AgentConfig,
        profile: FirmwareProfile,
        store: PackStore,
        plan: Plan,
        *,
        serve: bool = False,
        use_mesh: bool | None = None,
        agent: Agent | None = None,
        state_dir: Path | None = None,
        local_socket: bool | None = None,
    ) -> None:
        """``serve``: answer peers and open the local socket (`hearth run`); otherwise a one-shot user
        of the household (a CLI command with no agent running). ``use_mesh`` None: whenever [mesh] is
        enabled and this device is paired. ``agent``: engines to reuse (models already loaded);
        ``state_dir``: the mesh state (default from the config); ``local_socket`` default: ``serve``."""
        self.config, self.profile, self.store, self.plan = config, profile, store, plan
        self.serve = serve
        self.local_socket = serve if local_socket is None else local_socket
        self.state_dir = state_dir if state_dir is not None else mesh_state_dir(config)
        paired = config.mesh.enabled and HouseholdState.exists(self.state_dir)
        self.use_mesh = paired if use_mesh is None else use_mesh and paired
        self.state = HearthState.UNOPENED
        self.supervisor = Supervisor()
        """One for the agent's loops (mesh, updates, servers): restarts, drops, the health view."""
        self.agent = agent if agent is not None else Agent(config, profile, store, supervisor=self.supervisor)
        self.service: Any = None
        self.router = Router(plan=plan, policy=config.routing, local=self.agent, local_name=config.agent.name)
        self._lock = StateLock(self.state_dir) if self.use_mesh else None
        self._stack = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self.updater: Any = None
        self._spawned: list[asyncio.Task[Any]] = []
        """Model updates from the household (`Updater`), when on the mesh with [updates] enabled."""
        self._voice: VoicePipeline | None = None
        self._for_commands: ActionTranscriber | None = None
        self._ha_bridge: Any = None  # opened on first ask_home_assistant, kept for the agent's life
        self._ha_opening = asyncio.Lock()
        self.ha_discovery: DiscoveryPublisher | None = None
        """Home Assistant MQTT discovery ([home_assistant] mqtt_discovery, serving agents only)."""
        self.wyoming: WyomingServer | None = None
        """The Wyoming server for Home Assistant Assist ([voice] wyoming; serving agents only)."""
        self.advertiser: HouseholdAdvertiser | None = None
        """The household's zeroconf advert on the LAN ([mesh] advertise; serving agents only)."""

    @property
    def socket_path(self) -> Path:
        return self.state_dir / SOCKET_NAME

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not HearthState.UNOPENED:
            raise RuntimeError(f"this Hearth is {self.state.value}; make a new one")
        self.state = HearthState.RUNNING
        try:
            if self._lock is not None:
                self._lock.acquire()
                self._stack.callback(self._lock.release)
            await self._stack.enter_async_context(self.agent)
            if self.use_mesh:
                from edge_agent.service import MeshService

                self.service = MeshService(
                    self.config, self.profile, self.plan, self.state_dir, agent=self.agent, serve=self.serve,
                    supervisor=self.supervisor,
                )  # fmt: skip
                await self._stack.enter_async_context(self.service)
                self.router = self.service.router
                if self.serve:  # the household's front door on the LAN, for Home Assistant (hubs only)
                    from edge_agent.discovery.advertiser import HouseholdAdvertiser

                    cert = self.service.certificate
                    self.advertiser = HouseholdAdvertiser.for_mesh(
                        self.config.mesh, cert.household_id, cert.name, cert.device_class
                    )
                    await self._stack.enter_async_context(self.advertiser)
            self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.callback(self._cancel_spawned)  # runs first: the group then only waits for them
            if self.use_mesh and self.config.updates.enabled:
                from edge_agent.updater import Updater

                ucfg = self.config.updates
                self.updater = Updater(
                    self.service, self.store, interval_s=ucfg.interval_s, quota_mb=ucfg.quota_mb,
                    direct=ucfg.direct, direct_host=await self._direct_host() if self.serve else None,
                    direct_port=ucfg.direct_port, approval=ucfg.approval, supervisor=self.supervisor,
                )  # fmt: skip
                await self._stack.enter_async_context(self.updater)
                self.service.update_status = self.updater.status
                if self.serve:
                    self.spawn(self.updater.run_forever(), "model-updates")
            if self.local_socket and self.use_mesh:
                await self._open_local_socket()
            if self.serve and self.config.home_assistant.mqtt_discovery:
                await self._start_ha_discovery()
            if self.serve and self.use_mesh:
                self._keep_broker_crl()
            if self.serve and self.config.voice.wyoming:
                # Home Assistant Assist's speech-to-text, served by this agent's voice pipeline (VAD
                # here, Whisper wherever routing sends each window). A taken port is a config error.
                from edge_agent.voice.wyoming_server import WyomingServer

                self.wyoming = WyomingServer.for_voice(
                    self.config.voice,
                    self,
                    name=f"Hearth {self.config.agent.name}",
                    supervisor=self.supervisor,
                )
                await self._stack.enter_async_context(self.wyoming)
        except BaseException:
            await self._close()
            raise
        return self

    async def _start_ha_discovery(self) -> None:
        """Home Assistant MQTT discovery on its own connection (it never holds the agent up); revoked
        devices' configs are cleared, this device's own too."""
        from edge_agent.ha_discovery.agent import publisher_for, snapshot_of, watch_revocations

        snapshot = snapshot_of(self.config.agent.name, self.profile, self.agent.models, self.router,
                               self.service)  # fmt: skip
        self.ha_discovery = publisher_for(self.config, self.state_dir, snapshot, self.service,
                                          supervisor=self.supervisor)  # fmt: skip
        await self._stack.enter_async_context(self.ha_discovery)
        if self.service is not None:
            self._stack.callback(watch_revocations(self.ha_discovery, self.service.membership))

    def _keep_broker_crl(self) -> None:
        """On a hub running the broker CA: renew the broker's short-lived CRL and reload Mosquitto."""
        from edge_agent.mesh.broker_crl import CrlKeeper
        from edge_agent.mesh.broker_pki import BrokerPki

        if BrokerPki(self.state_dir).has_ca():
            state = HouseholdState(self.state_dir)
            keeper = CrlKeeper(self.state_dir, lambda: state.load().crl.revoked, supervisor=self.supervisor)
            self.spawn(keeper.run(), "broker-crl")

    async def _direct_host(self) -> str | None:
        """Where direct links listen: [updates] direct_address, else the address we reach the broker
        from; None when direct links are off or no route is found (chunks then use the broker)."""
        ucfg = self.config.updates
        if not ucfg.direct:
            return None
        if ucfg.direct_address is not None:
            return str(ucfg.direct_address)
        from edge_agent.mesh.direct import local_address_towards

        try:
            return await asyncio.to_thread(local_address_towards, *self.config.mesh.host_port)
        except OSError as exc:
            log.warning("no direct links: no route towards the broker (%s)", exc)
            return None

    async def _open_local_socket(self) -> None:
        from edge_agent.local_api import LocalApiServer

        if len(str(self.socket_path).encode()) > MAX_SOCKET_PATH:
            log.warning(
                "no local socket: %s is too long for a Unix socket; CLI commands cannot reach "
                "this agent while it runs (use a shorter [mesh] state_dir)",
                self.socket_path,
            )
            return
        server = LocalApiServer(self, self.socket_path)
        await server.start()
        self._stack.push_async_callback(server.aclose)

    @property
    def mesh(self) -> Any:
        """The mesh side (`MeshService`: endpoint, node, memory, offers), for diagnostics and tests."""
        if self.service is None:
            raise RuntimeError("this agent is not on the mesh ([mesh] disabled, or not paired)")
        return self.service

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.state is HearthState.CLOSED:
            return
        self.state = HearthState.CLOSED
        try:
            async with asyncio.timeout(SHUTDOWN_S):
                await self._stack.aclose()
        except TimeoutError:
            log.warning("shutdown took longer than %g s; leaving the rest", SHUTDOWN_S)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` for the agent's life, in its task group (cancelled at shutdown)."""
        assert self._group is not None, "Hearth is not running"
        task = self._group.create_task(coro, name=name)
        self._spawned.append(task)
        return task

    def _cancel_spawned(self) -> None:
        for task in self._spawned:
            task.cancel()

    # -- the façade -----------------------------------------------------------------------------------

    async def wait_for_peers(self, task: Task, timeout: float) -> None:
        if self.service is not None:
            await self.service.wait_for_peers(task, timeout)

    async def pull_updates(
        self,
        models: set[str] | None = None,
        on_progress: Callable[[list[UpdateStatus]], None] | None = None,
        wait_s: float = 3.0,
    ) -> list[UpdateOutcome]:
        """Ask the household for newer packs now, fetch and activate them (``models`` only, if given),
        reporting each model's state to ``on_progress`` as it goes."""
        if self.updater is None:
            raise HearthError(
                "model updates are off on this device: it is not on a household mesh, "
                "or [updates] enabled = false"
            )
        endpoint = self.service.endpoint
        await endpoint.wait_until(
            lambda: any(p.alive(time.monotonic()) for p in endpoint.peers.all()), wait_s
        )
        round_ = asyncio.ensure_future(self.updater.check_once(models, asked=True))
        try:
            while not round_.done():
                if on_progress is not None:
                    on_progress(self.updater.status())
                await asyncio.wait({round_}, timeout=0.25)
        finally:
            round_.cancel()  # no-op once done; the caller gave up otherwise
        outcomes: list[UpdateOutcome] = round_.result()
        if on_progress is not None:
            on_progress(self.updater.status())
        return outcomes

    def _runs_here(self, task: Task, pair: str | None = None) -> None:
        """Without the mesh, a task the plan cannot run here is this device's limit, said plainly."""
        if self.service is None:
            self.agent.models.require_local(task, pair)

    def generate(self, request: GenerateRequest, deadline_s: float | None = None) -> RoutedStream:
        """Stream an answer from wherever it is expected to finish first (failing over mid-answer)."""
        self._runs_here("generate")
        return self.router.generate(request, deadline_s)

    async def embed(self, request: EmbedRequest) -> tuple[EmbedResult, str]:
        self._runs_here("embed")
        return await self.router.embed(request)

    async def translate(self, request: TranslateRequest) -> tuple[TranslateResult, str]:
        if self.service is not None:
            result: tuple[TranslateResult, str] = await self.service.translate(request)
            return result
        return await self.router.translate(request)

    # -- voice ------------------------------------------------------------------------------------------

    async def transcribe(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """One window of speech, transcribed here or by a peer (policy permitting); (result, served by)."""
        self._runs_here("transcribe")
        from edge_agent.task_specs import TRANSCRIBE

        return await self.router.call(TRANSCRIBE, request)

    @property
    def voice(self) -> VoicePipeline:
        """The speech pipeline on this device's own VAD for the Wyoming server: Assist acts on what it
        hears, so its windows go only to devices trusted to transcribe commands (edge_agent.voice.trust)."""
        if self._voice is None:
            from edge_agent.voice.local_vad import ManagedVad
            from edge_agent.voice.pipeline import VoicePipeline

            vad = ManagedVad(self.agent.models, self.config.voice)
            self._voice = VoicePipeline(vad.find_speech, self.transcribe_command, self.config.voice.language,
                                        self.config.voice.max_seconds)  # fmt: skip
        return self._voice

    async def transcribe_command(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """A window of speech that becomes a command: only devices trusted to transcribe commands are
        asked ([voice] actions_transcribe; edge_agent.voice.trust)."""
        if self._for_commands is None:
            from edge_agent.voice.trust import ActionTranscriber, ActionTrust

            trust = ActionTrust.for_voice(self.config.voice)
            self._for_commands = ActionTranscriber(trust, lambda: self.router, self.transcribe)
        return await self._for_commands(request)

    @property
    def models(self) -> ModelManager:
        """The engines this process runs (the agent's)."""
        return self.agent.models

    def transcribe_pcm(self, pcm: bytes, *, language: str = "en") -> AsyncIterator[TranscriptPiece]:
        """A whole recording (16 kHz mono s16le): VAD here, then each speech window wherever it runs
        best; pieces in order as they finish (``Transcriber`` for the Wyoming server)."""
        return self.voice.transcribe_pcm(pcm, language=language)

    # -- Home Assistant --------------------------------------------------------------------------------

    async def ask_home_assistant(self, text: str, conversation_id: str | None = None) -> BridgeReply:
        """Hand a command (typed, or heard by the voice pipeline) to Home Assistant's Assist and return
        its answer ([home_assistant]; needs the `ha` extra). The bridge opens on first use and stays
        open, one HTTP session, until the agent closes; a failed open is retried on the next call."""
        if self.state is not HearthState.RUNNING:
            raise RuntimeError(f"this Hearth is {self.state.value}, not running")
        async with self._ha_opening:
            if self._ha_bridge is None:
                from edge_agent.ha_bridge import HomeAssistantBridge

                bridge = HomeAssistantBridge(self.config.home_assistant)
                self._ha_bridge = await self._stack.enter_async_context(bridge)
        reply: BridgeReply = await self._ha_bridge.converse(text, conversation_id)
        return reply

    # -- shared corrections ----------------------------------------------------------------------------

    def _corrections_here(self) -> Any:
        if self.service is None:
            raise HearthError(
                "corrections are shared by the household: this device is not on a household mesh "
                "(pair it first: hearth pair)"
            )
        return self.service.correction_sync

    async def correct(self, pair: str, source: str, target: str, model: str = "") -> Correction:
        """Record the user's translation of ``source`` and share it: every device of the household
        then answers that sentence with it, before any model or cache."""
        record: Correction = await self._corrections_here().correct(pair, source, target, model)
        return record

    async def withdraw_correction(self, record_id: str, *, here: bool = False) -> Correction:
        """Take a correction back for the household (the withdrawal), or with ``here`` only stop using
        it for this device's own translations (the declined correction)."""
        sync = self._corrections_here()
        record: Correction = sync.decline(record_id) if here else await sync.withdraw(record_id)
        return record

    async def corrections(self) -> list[Correction]:
        """Every correction and withdrawal held here, oldest first."""
        held = self._corrections_here().corrections.records.values()
        return sorted(held, key=lambda r: r.created)

    async def peers(self, wait_s: float | None = None) -> PeersReport:
        """Live peers and where each task would run from here; with ``wait_s``, listen that long for
        presence adverts first (a one-shot process hears the household anew) and measure the round trip
        to generate's candidates."""
        if wait_s is not None:
            await asyncio.sleep(wait_s)
            await self.wait_for_peers("generate", timeout=0)
        return self.peers_report()

    def peers_report(self) -> PeersReport:
        """Live peers and where each task would run from here right now."""
        now = time.monotonic()
        rows = self.service.endpoint.peers.all() if self.service is not None else []
        decisions = {
            "generate": self.router.decide(
                "generate", GenerateRequest.from_prompt("x", max_tokens=self.config.generate.max_tokens)
            ),
            "embed": self.router.decide("embed", EmbedRequest(texts=["x"])),
        }
        return PeersReport(
            household=self.service.membership.household_id if self.service is not None else "",
            peers=[
                PeerReport(
                    name=p.name,
                    device_id=p.device_id,
                    profile=p.presence.profile,
                    device_class=p.device_class,
                    rtt_ms=p.rtt_ms,
                    queue_depth=p.presence.queue_depth,
                    free_model_ram_mb=p.presence.free_model_ram_mb,
                    seen_s_ago=round(now - p.seen, 3),
                    offers=[o.model_dump() for o in p.presence.offers],
                    health=p.presence.health,
                )
                for p in rows
            ],
            routes={t: {"reason": d.reason, "candidates": d.explain()} for t, d in decisions.items()},
            dropped=dict(self.service.node.dropped) if self.service is not None else {},
            health=self.supervisor.report(),
        )
