"""Mesh fixtures for tests and benchmarks: households on disk, agents on the mesh, all real parts."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.errors import HearthError
from edge_agent.hearth import Hearth
from edge_agent.mesh.protocol import Offer
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.tasks import TASKS, Task


def provision(
    hub_home: Path, home: Path, name: str, profile: str, *, may_correct: bool = False
) -> HouseholdState:
    """Make ``home`` a member of the hub's household without the network (pairing has its own tests);
    ``may_correct``: as `hearth household invite --may-correct` approves it."""
    hub = HouseholdState(hub_home)
    if not hub.is_root():
        assert hub_home == home, "provision the hub itself first"
        hub.init_household(
            name=name,
            profile=profile,
            requests=list(TASKS),
            serves=list(load_profile(profile).serves),
            device_class=load_profile(profile).device_class,
        )
    member = HouseholdState(home)
    if hub_home == home:
        return member
    root, _ = hub.load_root()
    cert = root.issue(
        member.identity,
        name=name,
        profile=profile,
        requests=list(TASKS),
        serves=list(load_profile(profile).serves),
        device_class=load_profile(profile).device_class,
        may_correct=may_correct,
    )
    hub.record_issued(root, cert)
    data = hub.load()
    member.save(
        HouseholdFile(
            root_key=data.root_key,
            certificate=cert,
            crl=data.crl,
            group_key=data.group_key,
            group_epoch=data.group_epoch,
            peers=[data.certificate, *data.peers],
        )
    )
    return member


def config(name: str, port: int, profile: str, coalesce_ms: float = 4.0, **routing: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "agent": {"name": name, "profile": profile},
            "mesh": {
                "enabled": True,
                "broker": f"mqtt://127.0.0.1:{port}",
                "presence_interval_s": 1.0,
                "coalesce_ms": coalesce_ms,
                "advertise": "off",  # tests never announce households on the machine's real LAN
            },
            "routing": {"stall_timeout_s": 2.0, **routing},
            "engines": {"threads": 1},
        }
    )


def service(
    home: Path,
    cfg: AgentConfig,
    store: PackStore,
    *,
    serve: bool = True,
    agent: Agent | None = None,
) -> Hearth:
    """A device's agent, assembled as the product assembles it (the `Hearth` façade), with its mesh
    state in ``home``; ``serve=False`` is a one-shot client (no adverts, serves nothing)."""
    profile = load_profile(cfg.agent.profile)
    plan = plan_for_profile(profile, [p.manifest for p in store.list()])
    return Hearth(cfg, profile, store, plan, serve=serve, agent=agent, state_dir=home, local_socket=False)


async def crash(agent: Hearth) -> None:
    """What a dead agent looks like to the mesh: its TCP connection drops without DISCONNECT, so the
    broker fires its last will (its signed departure notice), and its work stops. The rest of the
    agent (its state lock, engines) is let go by `TwoHubs.revive` or at the end, outside the timed
    path of a failover measurement."""
    mesh = agent.mesh
    if mesh.node.transport is not None:
        mesh.node.transport.abort()
    await mesh.endpoint.close(clean=False)
    with contextlib.suppress(HearthError):  # a dead process's sockets close: its direct links end too
        links = agent.updater.links
        if links is not None:
            await links.close()


@dataclass
class TwoHubs:
    """Two hub agents with the same LLM pack, for failover trials that kill one of them per trial."""

    home: Path
    store: PackStore
    configs: dict[str, AgentConfig]
    hubs: dict[str, Hearth]
    offers: dict[Task, Offer] = field(default_factory=dict)

    @classmethod
    def create(cls, home: Path, port: int, store: PackStore) -> TwoHubs:
        # One token per chunk (no coalescing), so a kill "after N tokens" lands mid-stream: merged chunks
        # would let a fast hub deliver its whole backlog before the test's kill point.
        configs = {n: config(n, port, "hub", coalesce_ms=0) for n in ("hub-a", "hub-b")}
        for name in configs:
            provision(home / "hub-a", home / name, name, "hub")
        return cls(home, store, configs, {n: service(home / n, c, store) for n, c in configs.items()})

    async def revive(self, victim: str, watcher: Hearth) -> bool:
        """Restart ``victim`` (same keys and state dir, model already loaded), advertising half the speed
        while the survivor advertises full speed, so the next trial kills the other hub. True once
        ``watcher`` has heard both adverts."""
        cfg = self.configs[victim]
        cfg = cfg.model_copy(update={"mesh": cfg.mesh.model_copy(update={"self_benchmark": False})})
        dead = self.hubs[victim]
        await dead.__aexit__(None, None, None)  # the crashed process is gone: its state lock with it
        agent = dead.agent
        self.hubs[victim] = revived = service(self.home / victim, cfg, self.store, agent=agent)
        await revived.__aenter__()
        revived.mesh.offers.update(
            {t: o.model_copy(update={"rate": o.rate / 2}) for t, o in self.offers.items()}
        )
        survivor = self.hubs[next(n for n in self.hubs if n != victim)]
        survivor.mesh.offers.update(self.offers)
        # Steer by adverts alone: forget what the watcher measured of the survivor (the router would
        # otherwise rightly trust its measurement over the revived hub's claim).
        if (known := watcher.mesh.endpoint.peers.get(survivor.mesh.certificate.device_id)) is not None:
            known.throughput = None
        since = time.monotonic()
        await revived.mesh.endpoint.publish_presence()
        await survivor.mesh.endpoint.publish_presence()
        heard = [
            await watcher.mesh.endpoint.wait_for_presence(h.mesh.certificate.device_id, 5, since)
            for h in (revived, survivor)
        ]
        return all(heard)

    async def aclose(self) -> None:
        """Stop the hubs still running (revived ones included)."""
        for hub in self.hubs.values():
            await hub.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def watchdog(seconds: float, label: str) -> AsyncIterator[None]:
    """Fail a trial that makes no progress within ``seconds``, printing where every task is waiting
    (an intermittent hang was seen in long failover runs; this names the stage instead of a bare timeout)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=6, file=stacks)
        raise AssertionError(
            f"{label}: no progress within {seconds:g} s; tasks:\n{stacks.getvalue()}"
        ) from None
