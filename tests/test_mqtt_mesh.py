"""Mesh nodes over a real Mosquitto: delivery, confidentiality at the broker, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.publish as paho_publish
import pytest
from nacl.signing import SigningKey

from benchmarks.rigs.brokers import RecordingRelay, free_port, run_mosquitto
from edge_agent.mesh.assembly import MemberKeys, build_node
from edge_agent.mesh.broker import EmbeddedBroker
from edge_agent.mesh.household import HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Address, Channel
from edge_agent.mesh.node import GroupKeys, MeshNode
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.transports.mqtt import MqttConnector, MqttTransport
from tests.support.meshsim import household as sim_household

CANARY = b"CANARY-9d1c-the-broker-must-not-see-this"


@dataclass
class Household:
    root: HouseholdRoot
    group_key: bytes
    devices: dict[str, DeviceIdentity]

    def membership(self) -> Membership:
        m = Membership(self.root.key.verify_key)
        for name, ident in self.devices.items():
            m.add_certificate(
                self.root.issue(ident, name=name, profile="hub", requests=["generate"], serves=["generate"])
            )
        return m


@pytest.fixture
def household() -> Household:
    return Household(
        HouseholdRoot(SigningKey.generate()),
        os.urandom(32),
        {"hub": DeviceIdentity.generate(), "fridge": DeviceIdentity.generate()},
    )


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


def _node(hh: Household, name: str, port: int, tmp: Path) -> tuple[MeshNode, MqttTransport]:
    ident = hh.devices[name]
    membership = hh.membership()
    keys = MemberKeys(
        ident, membership.certs[ident.device_id], membership, GroupKeys(hh.group_key, 0, {}), tmp / name
    )
    node = build_node(keys)
    connector = MqttConnector(
        "127.0.0.1",
        port,
        household=node.household,
        device=ident.device_id,
        client_id=f"{name}-{ident.device_id[:8]}",
    )
    node.transport = connector.connect(None)
    return node, node.transport


async def _first(it: AsyncIterator, timeout: float = 5.0):  # type: ignore[no-untyped-def, type-arg]
    return await asyncio.wait_for(anext(it), timeout)


async def test_request_and_reply_through_mosquitto(household: Household, broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (hub, hub_link), (fridge, fridge_link) = (
        _node(household, "hub", broker.port, tmp_path),
        _node(household, "fridge", broker.port, tmp_path),
    )
    async with (
        hub_link,
        fridge_link,
        contextlib.aclosing(hub.receive(hub_link)) as hub_in,
        contextlib.aclosing(fridge.receive(fridge_link)) as fridge_in,
    ):
        await fridge.send(hub.device_id, Channel.REQUESTS, b"what is 2+2?", session=hub.session)
        req = await _first(hub_in)
        assert req.payload == b"what is 2+2?" and req.sender.name == "fridge"
        await hub.send(req.sender.device_id, Channel.RESPONSES, b"4", session=fridge.session)
        assert (await _first(fridge_in)).payload == b"4"


async def test_canary_is_not_in_broker_persistence_or_on_the_wire(
    household: Household, broker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    async with RecordingRelay(broker.port) as relay:
        fridge, link = _node(household, "fridge", relay.port, tmp_path)
        async with link:
            topic = str(Address(fridge.household, fridge.device_id, Channel.PRESENCE))
            await fridge.announce(CANARY)
            await fridge.send(household.devices["hub"].device_id, Channel.REQUESTS, CANARY, session="0" * 16)
    broker.stop()
    db = broker.db.read_bytes()
    assert topic.encode() in db  # the retained message really was persisted…
    assert CANARY not in db  # …but only as ciphertext
    assert b"hearth/" in relay.seen and CANARY not in relay.seen


async def test_hostile_frames_are_dropped_and_the_node_keeps_serving(
    household: Household,
    broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    (hub, hub_link), (fridge, fridge_link) = (
        _node(household, "hub", broker.port, tmp_path),
        _node(household, "fridge", broker.port, tmp_path),
    )
    topic = str(Address(hub.household, hub.device_id, Channel.REQUESTS))
    caplog.set_level(logging.WARNING, logger="edge_agent.mesh.node")
    async with hub_link, fridge_link, contextlib.aclosing(hub.receive(hub_link)) as incoming:
        hostile = [os.urandom(100), b"HE\x01\x00" + os.urandom(50), b"HE", os.urandom(1_500_000)]
        for payload in hostile:
            await asyncio.to_thread(
                paho_publish.single, topic, payload, hostname="127.0.0.1", port=broker.port
            )
        await fridge.send(hub.device_id, Channel.REQUESTS, b"still there?", session=hub.session)
        got = await _first(incoming)
        assert got.payload == b"still there?"
    assert sum(hub.dropped.values()) == len(hostile)
    assert hub.dropped["MalformedMessageError"] == len(hostile)
    assert "oversized frame" in caplog.text and "truncated frame" in caplog.text


@pytest.mark.parametrize(
    "broker_kind",
    [
        "memory",
        pytest.param("mosquitto", marks=pytest.mark.slow),
        pytest.param("amqtt", marks=pytest.mark.slow),
    ],
)
async def test_once_caught_up_a_client_has_read_the_whole_presence_board(
    broker_kind: str, tmp_path: Path
) -> None:
    """What a one-shot client decides by (whether its own agent already advertises this device, who
    serves what) is on the board when it connects: `caught_up` returns once all of it has been read,
    on each transport and broker, with no guess of how long retained adverts take to arrive."""
    async with contextlib.AsyncExitStack() as stack:
        connect = None
        if broker_kind != "memory":
            port = free_port()
            if broker_kind == "mosquitto":
                stack.enter_context(run_mosquitto(tmp_path / "broker", port=port))
            else:
                embedded = EmbeddedBroker("127.0.0.1", port)
                await embedded.start()
                stack.push_async_callback(embedded.stop)

            def connect(household: str, device: str, name: str) -> MqttConnector:
                return MqttConnector("127.0.0.1", port, household=household, device=device, client_id=name)

        home = await stack.enter_async_context(sim_household(tmp_path, connect))
        calm = MeshSettings(presence_interval_s=0.5, coalesce_ms=0)  # adverts: not a load test
        servers = [home.device(f"server-{i}", serves=["generate"], settings=calm) for i in range(5)]
        fridge = home.device("fridge", settings=calm)
        for dev in [*servers, fridge]:
            dev.interval_s = calm.presence_interval_s
        await home.start(*servers, fridge)
        if broker_kind == "memory":  # one link per device there: the agent goes, leaving its advert
            await fridge.endpoint.close(clean=False)
        for trial in range(3):
            async with home.client(fridge) as client:
                assert await client.caught_up(10), trial
                assert client.own_presence_seen, trial
                assert {p.device_id for p in client.peers.all()} == {d.id for d in servers}, trial
        assert fridge.node.dropped == {}  # the agent skipped its clients' markers in the shared inbox
        (tmp_path / "empty").mkdir()
        empty = await stack.enter_async_context(sim_household(tmp_path / "empty", connect))
        async with empty.client(empty.device("lonely")) as alone:  # an empty board
            assert await alone.caught_up(10)
            assert not alone.own_presence_seen and not alone.peers.all()
