"""One assembly (issue 22, point 2): every caller builds a device on the mesh with `mesh.assembly`, the
features it asks for plug themselves in (their presence fields come from them, once), and a mesh
service that cannot connect stops everything it started."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from benchmarks.rigs.brokers import free_port
from benchmarks.rigs.meshkit import config, provision
from edge_agent.errors import TransportError
from edge_agent.hearth import agent_router
from edge_agent.mesh.assembly import Features, MemberKeys, build_member
from edge_agent.mesh.corrections import Corrections
from edge_agent.mesh.endpoint import EndpointState
from edge_agent.mesh.memory import TranslationMemory
from edge_agent.mesh.protocol import Presence
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.memory import MeshSimulator
from edge_agent.mesh.transports.mqtt import MqttConnector
from edge_agent.models.selection import Plan
from edge_agent.profiles import load_profile
from edge_agent.service import MeshService


def _advert(keys: MemberKeys) -> Presence:
    return Presence(certificate=keys.certificate, session="0" * 16, link=0, profile="hub", interval_s=1.0)


def test_the_builder_plugs_in_only_the_features_asked_for(tmp_path: Path) -> None:
    keys = MemberKeys.load(provision(tmp_path, tmp_path, "hub", "hub"))
    sim = MeshSimulator(keys.membership.household_id)
    bare = build_member(keys, sim.connector(keys.certificate.device_id))
    assert (bare.rotation, bare.corrections, bare.memory) == (None, None, None)
    assert bare.node.device_id == keys.certificate.device_id
    # The bare endpoint adds only what the mesh itself speaks: forward-secret sessions (envelope v2).
    assert bare.endpoint.advert(_advert(keys)) == _advert(keys).model_copy(update={"envelopes": [1, 2]})

    corrections = Corrections(keys.membership.member, tmp_path / "corrections.json")
    features = Features(group_keys=True, corrections=corrections, memory=TranslationMemory())
    full = build_member(
        HouseholdState(tmp_path), sim.connector(keys.certificate.device_id), features=features
    )
    assert full.rotation is not None and full.corrections is not None and full.memory is not None
    advert = full.endpoint.advert(_advert(keys))
    assert advert.translation_memory is True  # each feature announces itself
    assert advert.corrections is None  # no records held yet: no digest


async def test_a_mesh_service_that_cannot_connect_stops_what_it_started(tmp_path: Path) -> None:
    state = provision(tmp_path, tmp_path, "hub", "hub")
    broker_port = free_port()
    cfg = config("hub", broker_port, "hub")
    cfg = cfg.model_copy(update={"mesh": cfg.mesh.model_copy(update={"embedded_broker": True})})
    keys = MemberKeys.load(state)
    device = keys.certificate.device_id
    nobody = MqttConnector("127.0.0.1", free_port(), household=keys.membership.household_id, device=device,
                           client_id=f"{device}-test")  # fmt: skip
    plan = Plan(profile_id="hub", budget_mb=0)
    route = agent_router(cfg, plan, None)
    svc = MeshService(cfg, load_profile("hub"), plan, tmp_path, serve=False, router=route, connector=nobody,
                      connect_timeout_s=0.3)  # fmt: skip
    before = asyncio.all_tasks()
    with pytest.raises(TransportError):
        await svc.__aenter__()
    await asyncio.sleep(0.05)
    assert [t.get_name() for t in asyncio.all_tasks() - before if not t.done()] == []
    assert svc.endpoint.state is EndpointState.CLOSED
    with socket.socket() as s:  # the embedded broker is stopped: its port is free again
        s.bind(("127.0.0.1", broker_port))


async def test_a_mesh_service_leaves_nothing_running_after_it_closes(tmp_path: Path) -> None:
    """Opened on the in-memory mesh, then closed: no task of its endpoint outlives it; its advert's load
    figures are the one device status (the snapshot Home Assistant discovery reads too)."""
    state = provision(tmp_path, tmp_path, "hub", "hub")
    keys = MemberKeys.load(state)
    sim = MeshSimulator(keys.membership.household_id)
    cfg = config("hub", free_port(), "hub")
    plan = Plan(profile_id="hub", budget_mb=0)
    route, link = agent_router(cfg, plan, None), sim.connector(keys.certificate.device_id)
    svc = MeshService(cfg, load_profile("hub"), plan, tmp_path, serve=False, router=route, connector=link)
    before = asyncio.all_tasks()
    async with svc:
        status, advert = svc.status(), svc.presence()
        assert status.connected
        assert (advert.queue_depth, advert.free_model_ram_mb, advert.served, advert.offloaded) == (
            status.queue_depth, status.free_model_ram_mb, status.served, status.offloaded
        )  # fmt: skip
    await asyncio.sleep(0.05)
    assert [t.get_name() for t in asyncio.all_tasks() - before if not t.done()] == []
    assert svc.endpoint.state is EndpointState.CLOSED
