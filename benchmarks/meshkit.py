"""Mesh fixtures for tests and benchmarks: households on disk, agents on the mesh, all real parts."""

from __future__ import annotations

from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.service import MeshService
from edge_agent.tasks import TASKS


def provision(hub_home: Path, home: Path, name: str, profile: str) -> HouseholdState:
    """Make ``home`` a member of the hub's household without the network (pairing has its own tests)."""
    hub = HouseholdState(hub_home)
    if not hub.is_root():
        assert hub_home == home, "provision the hub itself first"
        hub.init_household(name=name, profile=profile, requests=list(TASKS),
                           serves=list(load_profile(profile).serves))  # fmt: skip
    member = HouseholdState(home)
    if hub_home == home:
        return member
    root, _ = hub.load_root()
    cert = root.issue(member.identity, name=name, profile=profile, requests=list(TASKS),
                      serves=list(load_profile(profile).serves))  # fmt: skip
    hub.record_issued(root, cert)
    data = hub.load()
    member.save(HouseholdFile(root_key=data.root_key, certificate=cert, crl=data.crl, group_key=data.group_key,
                              group_epoch=data.group_epoch, peers=[data.certificate, *data.peers]))  # fmt: skip
    return member


def config(name: str, port: int, profile: str, **routing: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "agent": {"name": name, "profile": profile},
            "mesh": {"enabled": True, "broker": f"mqtt://127.0.0.1:{port}", "presence_interval_s": 1.0},
            "routing": {"stall_timeout_s": 2.0, **routing},
            "engines": {"threads": 1},
        }
    )


def service(home: Path, cfg: AgentConfig, store: PackStore, *, serve: bool = True, agent: Agent | None = None,
            suffix: str = "") -> MeshService:  # fmt: skip
    profile = load_profile(cfg.agent.profile)
    plan = plan_for_profile(profile, [p.manifest for p in store.list()])
    if agent is None and serve:
        agent = Agent(cfg, profile, store)
    return MeshService(cfg, profile, plan, home, agent=agent, serve=serve, client_id_suffix=suffix)
