"""The composition root: one object owns an agent's life, and every caller goes through it.

`Hearth` assembles the engines (`Agent`), the one `Router`, and, when the device is a paired mesh member,
the mesh (`MeshService`: endpoint and features, built by `edge_agent.mesh.assembly`) under the lock
that makes this process the only user of the device's mesh state; a serving agent also opens its
owner-only local socket (`local_api`), through which CLI commands reach it. Callers (CLI, demo,
benchmarks, tests, and later HTTP and Wyoming) use only the façade (`edge_agent.agent_facade`:
`generate`, `embed`, `translate`, `transcribe`, `peers`, ...), whatever runs where.

Lifecycle: an async context manager with a state enum and one TaskGroup; shutdown is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from edge_agent.agent import Agent
from edge_agent.agent_facade import AgentFacade, HearthState
from edge_agent.config import AgentConfig
from edge_agent.errors import HearthError
from edge_agent.facade import PeerReport, PeersReport
from edge_agent.mesh.files import StateLock
from edge_agent.mesh.interfaces import PeerDirectory
from edge_agent.mesh.protocol import Offer
from edge_agent.mesh.state import HouseholdState, state_dir_for
from edge_agent.models.selection import Plan
from edge_agent.models.store import PackStore
from edge_agent.paths import hearth_home
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.router import Router
from edge_agent.supervision import Supervisor
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.discovery.advertiser import HouseholdAdvertiser
    from edge_agent.ha_discovery import DiscoveryPublisher
    from edge_agent.mesh.protocol import UpdateStatus
    from edge_agent.service import MeshService
    from edge_agent.updates.status import UpdateOutcome
    from edge_agent.updates.updater import Updater
    from edge_agent.voice.wyoming_server import WyomingServer

log = logging.getLogger(__name__)

__all__ = ["SOCKET_NAME", "Hearth", "HearthState", "PeerReport", "PeersReport"]

SOCKET_NAME = "agent.sock"
SHUTDOWN_S = 20.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


def mesh_state_dir(config: AgentConfig) -> Path:
    """Where this device's mesh keys and household state live (``[mesh] state_dir`` or <home>/mesh)."""
    return state_dir_for(config.mesh.state_dir, hearth_home())


def agent_router(
    config: AgentConfig, plan: Plan, agent: Agent | None
) -> Callable[[PeerDirectory | None, dict[Task, Offer] | None], Router]:
    """How an agent routes: its plan and policy, its own engines, and the mesh's peers when given."""

    def build(endpoint: PeerDirectory | None = None, offers: dict[Task, Offer] | None = None) -> Router:
        return Router(plan=plan, policy=config.routing.settings(), local=agent, endpoint=endpoint,
                      local_offers=offers, local_name=config.agent.name)  # fmt: skip

    return build


class Hearth(AgentFacade):
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
        super().__init__()
        self.state = HearthState.UNOPENED
        self.supervisor = Supervisor()
        """One for the agent's loops (mesh, updates, servers): restarts, drops, the health view."""
        self.agent = agent if agent is not None else Agent(config, profile, store, supervisor=self.supervisor)
        self.service: MeshService | None = None
        self._route = agent_router(config, plan, self.agent)
        if not self.use_mesh:
            self.router = self._route(None, None)  # on the mesh: built once the endpoint is (__aenter__)
        self._lock = StateLock(self.state_dir) if self.use_mesh else None
        self._stack = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._updater: Updater | None = None
        self._spawned: list[asyncio.Task[Any]] = []
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
                    supervisor=self.supervisor, router=self._route,
                )  # fmt: skip
                self.router = self.service.router  # the one router, over the endpoint the service built
                await self._stack.enter_async_context(self.service)
                if self.serve:  # the household's front door on the LAN, for Home Assistant (hubs only)
                    from edge_agent.discovery.advertiser import HouseholdAdvertiser

                    cert = self.service.certificate
                    self.advertiser = HouseholdAdvertiser.for_mesh(
                        self.config.mesh.advert_settings(), cert.household_id, cert.name, cert.device_class
                    )
                    await self._stack.enter_async_context(self.advertiser)
            self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.callback(self._cancel_spawned)  # runs first: the group then only waits for them
            if self.service is not None and self.config.updates.enabled:
                await self._start_updates(self.service)
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
                    self.config.voice.settings().wyoming,
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
        from edge_agent.status import DeviceStatus, device_status

        service = self.service

        def status() -> DeviceStatus:
            if service is not None:
                return service.status()
            return device_status(self.profile, self.agent.models, self.router)

        member = (service.certificate, service.membership) if service is not None else None
        snapshot = snapshot_of(self.config.agent.name, self.profile, status, member)
        own_id = service.certificate.device_id if service is not None else None
        self.ha_discovery = publisher_for(self.config, self.state_dir, snapshot, own_id,
                                          supervisor=self.supervisor)  # fmt: skip
        await self._stack.enter_async_context(self.ha_discovery)
        if service is not None:
            self._stack.callback(watch_revocations(self.ha_discovery, service.membership))

    def _keep_broker_crl(self) -> None:
        """On a hub running the broker CA: renew the broker's short-lived CRL and reload Mosquitto."""
        from edge_agent.mesh.broker_crl import CrlKeeper
        from edge_agent.mesh.broker_pki import BrokerPki

        if BrokerPki(self.state_dir).has_ca():
            state = HouseholdState(self.state_dir)
            keeper = CrlKeeper(self.state_dir, lambda: state.load().crl.revoked, supervisor=self.supervisor)
            self.spawn(keeper.run(), "broker-crl")

    @property
    def updater(self) -> Updater:
        """Model updates from the household; HearthError unless on the mesh with [updates] enabled."""
        if self._updater is None:
            raise HearthError(
                "model updates are off on this device: it is not on a household mesh, "
                "or [updates] enabled = false"
            )
        return self._updater

    async def _start_updates(self, service: MeshService) -> None:
        """Model updates, on the endpoint's feature port: the updater adds its rows (and its direct
        contact) to this device's presence itself, and removes them when it closes."""
        from edge_agent.updates.ports import DeviceFacts, UpdateSettings
        from edge_agent.updates.updater import Updater

        facts = DeviceFacts.of(service.state, service.membership, service.certificate)
        settings = UpdateSettings.of(self.config.updates, self.config.mesh.host_port)
        if "mqtt" not in self.config.mesh.transports and settings.direct_address is None:
            # No broker to find our own address by: direct links listen where CoAP is announced.
            contact = service.coap_contact()
            if contact is None:
                settings = dataclasses.replace(settings, direct=False)
            else:
                settings = dataclasses.replace(settings, direct_address=contact.hosts[0])
        self._updater = updater = Updater(
            service.endpoint, self.store, device=facts, plan=self.plan, settings=settings,
            serves=service.serve, busy=service.inference_busy, retire=self.agent.models.retire,
            supervisor=self.supervisor,
        )  # fmt: skip
        await self._stack.enter_async_context(updater)
        if service.serve:
            self.spawn(updater.run_forever(), "model-updates")

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
    def mesh(self) -> MeshService:
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

    # -- model updates ----------------------------------------------------------------------------------

    async def pull_updates(
        self,
        models: set[str] | None = None,
        on_progress: Callable[[list[UpdateStatus]], None] | None = None,
        wait_s: float = 3.0,
    ) -> list[UpdateOutcome]:
        """Ask the household for newer packs now, fetch and activate them (``models`` only, if given),
        reporting each model's state to ``on_progress`` as it goes."""
        updater = self.updater
        assert self.service is not None  # updates run on the mesh only
        endpoint = self.service.endpoint
        await endpoint.wait_until(
            lambda: any(p.alive(time.monotonic()) for p in endpoint.peers.all()), wait_s
        )
        round_ = asyncio.ensure_future(updater.check_once(models, asked=True))
        try:
            while not round_.done():
                if on_progress is not None:
                    on_progress(updater.status())
                await asyncio.wait({round_}, timeout=0.25)
        finally:
            round_.cancel()  # no-op once done; the caller gave up otherwise
        outcomes: list[UpdateOutcome] = round_.result()
        if on_progress is not None:
            on_progress(updater.status())
        return outcomes
