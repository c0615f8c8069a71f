"""Home Assistant MQTT discovery on a real Mosquitto: the retained device config and its structure,
states sent when they change, the last will, HA's birth message, decommissioning (no ghosts), and
nothing at all when it is off (the default). A recording client stands in for Home Assistant; every
wait is for a message, bounded by a timeout.

Issue 21, N13: discovery ids are keyed hashes that do not link to mesh device ids (and no document
names a device id), usage is published once per usage window only, a document under the old id is
cleared; the publisher's loop runs under the agent's supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from benchmarks.rigs.brokers import Mosquitto, free_port, run_mosquitto
from benchmarks.rigs.meshkit import config, provision, service
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.ha_discovery import (
    DeviceDescription,
    DeviceState,
    DiscoveryPublisher,
    DiscoverySettings,
    PublisherState,
    Topics,
    clear_devices,
    discovery_payload,
    object_id_for,
)
from edge_agent.ha_discovery.payload import SAFE_ID, discovery_id, published_components, slug
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import Frame, MqttClient
from edge_agent.models.store import PackStore
from edge_agent.supervision import Supervisor
from tests.support.cli import hearth, ok

WAIT = 15.0
FAST = DiscoverySettings(interval_s=0.05, heartbeat_s=3600, reconnect_min_s=0.05, reconnect_max_s=0.5,
                         io_timeout_s=5, usage_interval_s=0.05)  # fmt: skip
KEY = bytes(range(32))
"""A household's root public key (what paired devices' discovery ids are keyed with)."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


# -- a stand-in for Home Assistant: a client that records what it receives ------------------------------


class Observer:
    """Subscribes like Home Assistant and records every message, in the broker's order."""

    def __init__(self, port: int, *patterns: str) -> None:
        self.client = MqttClient("127.0.0.1", port, client_id=f"observer-{secrets.token_hex(4)}")
        self.patterns = patterns
        self.marker = f"test/marker/{secrets.token_hex(4)}"
        self.queue: asyncio.Queue[Frame] = asyncio.Queue()
        self.seen: list[Frame] = []
        """Every message received, in order (next/collect consume the queue, not this)."""
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        await self.client.__aenter__()
        for pattern in (*self.patterns, self.marker):
            await self.client.subscribe(pattern)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for frame in self.client.frames():
            self.seen.append(frame)
            self.queue.put_nowait(frame)

    async def next(self, topic: str, where: Callable[[Frame], bool] = lambda f: True) -> Frame:
        """The next message on ``topic`` that satisfies ``where`` (others on the way are skipped)."""
        async with asyncio.timeout(WAIT):
            while True:
                frame = await self.queue.get()
                if frame.topic == topic and where(frame):
                    return frame

    async def collect(self, topic: str, until: Callable[[Frame], bool]) -> list[Frame]:
        """Every message on ``topic`` up to and including the first that satisfies ``until``."""
        seen = []
        async with asyncio.timeout(WAIT):
            while True:
                frame = await self.queue.get()
                if frame.topic == topic:
                    seen.append(frame)
                    if until(frame):
                        return seen

    async def until_marker(self) -> list[Frame]:
        """Everything received before a marker this client publishes now: what the broker had
        delivered to us by then (retained messages come right after subscribing)."""
        await self.client.publish(self.marker, b"mark")
        seen = []
        async with asyncio.timeout(WAIT):
            while (frame := await self.queue.get()).topic != self.marker:
                seen.append(frame)
        return seen

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self.client.publish(topic, payload, retain=retain)


@dataclass
class Device:
    """What an agent reports (the publisher's input), changed by the test as an agent's load changes."""

    desc: DeviceDescription
    state: DeviceState
    calls: int = 0
    ticked: dict[int, asyncio.Event] = field(default_factory=dict)

    def __call__(self) -> tuple[DeviceDescription, DeviceState]:
        self.calls += 1
        if (event := self.ticked.get(self.calls)) is not None:
            event.set()
        return self.desc, self.state

    async def wait_calls(self, n: int) -> None:
        event = self.ticked.setdefault(n, asyncio.Event())
        if self.calls >= n:
            return
        async with asyncio.timeout(WAIT):
            await event.wait()


def fridge(**state: Any) -> Device:
    desc = DeviceDescription(object_id="f" * 32, name="Kitchen fridge", model="fridge-panel",
                             device_class="appliance", sw_version="0.1.0", via="a" * 32,
                             on_mesh=True)  # fmt: skip
    values: dict[str, Any] = {"queue_depth": 0, "requests_served": 0, "requests_offloaded": 0,
                              "free_model_ram": 300, "speed": {"embed": 120.5, "translate": 9.25},
                              "mesh": "ON"} | state  # fmt: skip
    return Device(desc, DeviceState(**values))


def connector(port: int) -> Callable[[str, tuple[str, bytes] | None], MqttClient]:
    return lambda client_id, will: MqttClient("127.0.0.1", port, client_id=client_id, will=will)


def doc(frame: Frame) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(frame.payload)
    return data


# -- ids and documents (pure) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Kitchen Fridge", "Küche Kühlschrank", "冰箱", "洗衣机", "fridge/+/#", "  ", "café ☕ 2", "a" * 64,
     "Kuche Kuhlschrank", "kitchen_fridge"],
)  # fmt: skip
def test_any_device_name_gives_a_safe_object_id(name: str) -> None:
    object_id = object_id_for(None, name)
    assert re.fullmatch(SAFE_ID, object_id) and len(object_id) <= 64, object_id
    Topics(object_id=object_id)  # a topic HA's discovery matcher accepts


def test_object_ids_stay_distinct_and_stable() -> None:
    names = [
        "Küche",
        "Kuche",
        "kuche",
        "冰箱",
        "洗衣机",
        "Kitchen Fridge",
        "kitchen fridge",
        "kitchen_fridge",
    ]
    ids = [object_id_for(None, n) for n in names]
    assert len(set(ids)) == len(names), ids
    assert ids == [object_id_for(None, n) for n in names]
    assert object_id_for(None, "kitchen_fridge") == "hearth_kitchen_fridge"  # a clean name reads as itself
    assert slug("Küche Kühlschrank") == "kuche_kuhlschrank"
    # A paired device is named by a keyed hash of its device id: a rename does not orphan its config.
    assert (
        object_id_for("0123abcd" * 4, "Kitchen fridge", KEY)
        == object_id_for("0123abcd" * 4, "Fridge", KEY)
        == discovery_id("0123abcd" * 4, KEY)
    )


@pytest.mark.parametrize("bad", ["a b", "fridge/1", "#", "+", "", "kühl"])
def test_unsafe_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        DeviceDescription(object_id=bad, name="x", model="hub", sw_version="0")
    with pytest.raises(ValidationError):
        Topics(object_id=bad)
    with pytest.raises(ValueError, match="not a safe MQTT discovery id"):
        object_id_for(bad, "x", KEY)


def test_discovery_document_structure() -> None:
    device = fridge()
    topics = Topics(prefix="homeassistant", object_id=device.desc.object_id)
    payload = json.loads(discovery_payload(device.desc, device.state, topics).encode())
    assert set(payload) == {"dev", "o", "avty_t", "stat_t", "qos", "cmps"}
    assert payload["dev"] == {"ids": ["hearth_" + "f" * 32], "name": "Kitchen fridge", "mf": "Hearth",
                              "mdl": "fridge-panel", "mdl_id": "appliance", "sw": "0.1.0",
                              "via_device": "hearth_" + "a" * 32}  # fmt: skip
    assert payload["o"]["name"] == "Hearth" and payload["o"]["sw"] == "0.1.0"
    assert payload["avty_t"] == topics.availability and payload["stat_t"] == topics.state
    cmps = payload["cmps"]
    assert set(cmps) == {"queue_depth", "requests_served", "requests_offloaded", "free_model_ram",
                         "embed_speed", "translate_speed", "mesh"}  # fmt: skip
    assert all(re.fullmatch(SAFE_ID, key) for key in cmps)
    assert len({c["uniq_id"] for c in cmps.values()}) == len(cmps)
    assert cmps["free_model_ram"] == {
        "p": "sensor", "name": "Free model RAM", "dev_cla": "data_size", "unit_of_meas": "MB",
        "stat_cla": "measurement", "ent_cat": "diagnostic", "val_tpl": "{{ value_json.free_model_ram }}",
        "uniq_id": "hearth_" + "f" * 32 + "_free_model_ram",
    }  # fmt: skip
    assert cmps["requests_served"]["stat_cla"] == "total_increasing"
    assert cmps["translate_speed"]["unit_of_meas"] == "sentences/s"
    assert cmps["translate_speed"]["val_tpl"] == "{{ value_json.speed.translate }}"
    assert cmps["mesh"]["p"] == "binary_sensor" and cmps["mesh"]["dev_cla"] == "connectivity"
    # A device outside a household: no mesh sensors, no hub; the hub itself hangs off nothing.
    alone = device.desc.model_copy(update={"on_mesh": False, "via": None})
    standalone = discovery_payload(alone, device.state.model_copy(update={"speed": {}}), topics)
    assert set(standalone.components) == {"queue_depth", "free_model_ram"}
    assert standalone.device.via_device is None
    # Components that went away are listed with their platform only (HA then removes them).
    gone = discovery_payload(device.desc, device.state, topics, removed={"generate_speed": "sensor"})
    assert gone.dump()["cmps"]["generate_speed"] == {"p": "sensor"}
    assert published_components(gone.encode())["generate_speed"] == "sensor"
    assert published_components(b"not json") == published_components(b'{"cmps": 3}') == {}


def test_config_section_is_off_by_default_and_checked() -> None:
    assert load_config(None, {}).home_assistant.mqtt_discovery is False
    on = load_config(None, {"HEARTH_HOME_ASSISTANT__MQTT_DISCOVERY": "true"}).home_assistant
    assert on.mqtt_discovery and on.discovery_prefix == "homeassistant" and on.mqtt_broker is None
    for env, message in [
        ({"HEARTH_HOME_ASSISTANT__DISCOVERY_PREFIX": "ha/#"}, "discovery_prefix: must be MQTT topic levels"),
        ({"HEARTH_HOME_ASSISTANT__DISCOVERY_PREFIX": "/ha"}, "discovery_prefix: must be MQTT topic levels"),
        ({"HEARTH_HOME_ASSISTANT__MQTT_BROKER": "http://ha:1883"}, "home_assistant.mqtt_broker"),
        ({"HEARTH_HOME_ASSISTANT__MQTT_PASSWORD": "x"}, "mqtt_password only apply with mqtt_broker"),
        ({"HEARTH_HOME_ASSISTANT__STATE_INTERVAL_S": "0"}, "home_assistant.state_interval_s"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, env)


# -- the publisher on a real broker ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def publishing(
    device: Device, port: int, settings: DiscoverySettings = FAST
) -> AsyncIterator[DiscoveryPublisher]:
    async with DiscoveryPublisher(device, connector(port), settings) as publisher:
        await publisher.wait_online(WAIT)
        yield publisher


async def test_retained_config_state_and_availability_appear(broker: Mosquitto) -> None:
    device = fridge(requests_served=3)
    topics = Topics(object_id=device.desc.object_id)
    async with publishing(device, broker.port) as publisher:
        assert publisher.state is PublisherState.ONLINE
        # Home Assistant starting later finds all three retained.
        async with Observer(broker.port, "homeassistant/device/+/config", "hearth/ha/#") as ha:
            retained = {f.topic: f for f in await ha.until_marker()}
    assert set(retained) == {topics.config, topics.state, topics.availability}
    assert all(f.retained for f in retained.values())
    config_doc = doc(retained[topics.config])
    assert config_doc["dev"]["name"] == "Kitchen fridge" and config_doc["stat_t"] == topics.state
    assert doc(retained[topics.state]) == {"queue_depth": 0, "requests_served": 3, "requests_offloaded": 0,
                                           "free_model_ram": 300, "mesh": "ON",
                                           "speed": {"embed": 120.5, "translate": 9.25}}  # fmt: skip
    assert retained[topics.availability].payload == b"online"


async def test_state_is_sent_when_it_changes_and_on_the_heartbeat(broker: Mosquitto) -> None:
    device = fridge()
    topics = Topics(object_id=device.desc.object_id)
    async with Observer(broker.port, topics.state) as ha, publishing(device, broker.port) as publisher:
        await device.wait_calls(device.calls + 5)  # five more checks with nothing new
        device.state = device.state.model_copy(update={"queue_depth": 2, "requests_served": 1})
        publisher.refresh()
        states = await ha.collect(topics.state, lambda f: doc(f)["queue_depth"] == 2)
        assert [doc(f)["queue_depth"] for f in states] == [0, 2], "an unchanged state was sent again"
    heartbeat = FAST.model_copy(update={"heartbeat_s": 0.2})
    device = fridge(queue_depth=1)
    async with Observer(broker.port, topics.state) as ha, publishing(device, broker.port, heartbeat):
        await ha.next(topics.state, lambda f: not f.retained and doc(f)["queue_depth"] == 1)
        await ha.next(topics.state, lambda f: doc(f)["queue_depth"] == 1)  # the same again: a heartbeat


async def test_last_will_says_offline_when_the_connection_dies_then_it_comes_back(broker: Mosquitto) -> None:
    device = fridge()
    topics = Topics(object_id=device.desc.object_id)
    async with Observer(broker.port, topics.availability) as ha, publishing(device, broker.port) as publisher:
        await ha.next(topics.availability, lambda f: f.payload == b"online")
        publisher.abort()  # the TCP connection drops without DISCONNECT, as when the agent crashes
        await ha.next(topics.availability, lambda f: f.payload == b"offline")
        await ha.next(topics.availability, lambda f: f.payload == b"online")  # reconnected by itself
        await publisher.wait_online(WAIT)
    # A clean stop says offline itself (a clean DISCONNECT fires no will).
    async with Observer(broker.port, topics.availability) as ha:
        assert [f.payload for f in await ha.until_marker()] == [b"offline"]


async def test_home_assistant_online_gets_everything_again(broker: Mosquitto) -> None:
    device = fridge()
    topics = Topics(object_id=device.desc.object_id)
    async with (
        Observer(broker.port, topics.config, topics.state, topics.availability) as ha,
        publishing(device, broker.port),
    ):
        await ha.next(topics.availability, lambda f: f.payload == b"online")
        await ha.until_marker()
        await ha.publish("homeassistant/status", b"offline")  # HA stopping: nothing to do
        await ha.publish("homeassistant/status", b"online")  # HA's birth message after a restart
        again = {(await ha.next(t)).topic: t for t in (topics.config, topics.state, topics.availability)}
        assert len(again) == 3


async def test_decommission_clears_every_retained_document(broker: Mosquitto) -> None:
    device = fridge()
    topics = Topics(object_id=device.desc.object_id)
    async with Observer(broker.port, *topics.all_retained()) as ha:
        async with publishing(device, broker.port) as publisher:
            await ha.next(topics.config, lambda f: bool(f.payload))
            await publisher.decommission()
            assert publisher.state is PublisherState.DECOMMISSIONED
            for topic in topics.all_retained():
                await ha.next(topic, lambda f: f.payload == b"")
        assert not [f for f in await ha.until_marker() if f.payload], "published after decommissioning"
    async with Observer(broker.port, "homeassistant/#", "hearth/ha/#") as late:
        assert await late.until_marker() == [], "a retained document survived"


async def test_a_component_that_went_away_is_removed_even_after_a_restart(broker: Mosquitto) -> None:
    device = fridge()
    topics = Topics(object_id=device.desc.object_id)
    async with publishing(device, broker.port):
        pass
    # The next run measures translation only: it reads its previous config back and removes the other.
    device = fridge(speed={"translate": 9.0})
    async with Observer(broker.port, topics.config) as ha, publishing(device, broker.port):
        removal = await ha.next(topics.config, lambda f: "embed_speed" in doc(f)["cmps"] and not f.retained)
        assert doc(removal)["cmps"]["embed_speed"] == {"p": "sensor"}
        assert "uniq_id" in doc(removal)["cmps"]["translate_speed"]


async def test_config_cleared_by_someone_else_is_not_published_again(broker: Mosquitto) -> None:
    device = fridge()
    topics = Topics(object_id=device.desc.object_id)
    async with (
        Observer(broker.port, *topics.all_retained()) as ha,
        publishing(device, broker.port) as publisher,
    ):
        await ha.next(topics.availability, lambda f: f.payload == b"online")
        await ha.publish(topics.config, b"", retain=True)  # "delete device" in Home Assistant
        await publisher.wait_stopped(WAIT)  # it tidies up and goes quiet
        assert publisher.state is PublisherState.WITHDRAWN
        await ha.next(topics.availability, lambda f: f.payload == b"")
        await ha.publish("homeassistant/status", b"online")
        assert not [f for f in await ha.until_marker() if f.payload], "published after being withdrawn"


@pytest.mark.slow  # a real Mosquitto, started late
async def test_it_waits_for_a_broker_that_is_not_there_yet(tmp_path: Path) -> None:
    port = free_port()
    device = fridge()
    with contextlib.ExitStack() as later:
        async with DiscoveryPublisher(device, connector(port), FAST) as publisher:
            assert publisher.state is PublisherState.CONNECTING  # the agent is not held up
            later.enter_context(run_mosquitto(tmp_path / "late-broker", port))
            await publisher.wait_online(WAIT)
            async with Observer(port, Topics(object_id=device.desc.object_id).config) as ha:
                assert len(await ha.until_marker()) == 1


# -- through the agent (the composition root) -------------------------------------------------------------


def _with_discovery(cfg: AgentConfig, *, benchmark: bool) -> AgentConfig:
    ha = cfg.home_assistant.model_copy(update={"mqtt_discovery": True, "state_interval_s": 0.1})
    mesh = cfg.mesh.model_copy(update={"self_benchmark": benchmark})
    return cfg.model_copy(update={"home_assistant": ha, "mesh": mesh})


async def test_agents_publish_themselves_and_a_revoked_member_disappears(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "Kitchen fridge", "fridge-panel")
    hub_id = HouseholdState(tmp_path / "hub").identity.device_id
    fridge_id = HouseholdState(tmp_path / "fridge").identity.device_id
    hub_cfg = _with_discovery(config("hub", broker.port, "hub"), benchmark=False)
    fridge_cfg = _with_discovery(config("Kitchen fridge", broker.port, "fridge-panel"), benchmark=True)
    key = bytes(HouseholdState(tmp_path / "hub").membership()[0].root_key)
    hub_oid, fridge_oid = discovery_id(hub_id, key), discovery_id(fridge_id, key)
    hub_topics, fridge_topics = Topics(object_id=hub_oid), Topics(object_id=fridge_oid)
    async with (
        Observer(broker.port, "homeassistant/#", "hearth/ha/#") as ha,
        service(tmp_path / "hub", hub_cfg, store) as hub,
        service(tmp_path / "fridge", fridge_cfg, store) as fridge,
    ):
        hub_doc = doc(await ha.next(hub_topics.config))
        assert hub_doc["dev"]["name"] == "hub" and hub_doc["dev"]["mdl"] == "hub"
        assert "via_device" not in hub_doc["dev"]  # the hub hangs off nothing
        fridge_doc = doc(await ha.next(fridge_topics.config))
        expected = {"ids": [f"hearth_{fridge_oid}"], "name": "Kitchen fridge", "mf": "Hearth",
                    "mdl": "fridge-panel", "mdl_id": "appliance", "sn": None,
                    "via_device": f"hearth_{hub_oid}"}  # fmt: skip
        assert {k: fridge_doc["dev"].get(k) for k in expected} == expected
        measured = set(fridge.mesh.offers)
        assert measured and {f"{t}_speed" for t in measured} <= set(fridge_doc["cmps"])
        state = doc(await ha.next(fridge_topics.state, lambda f: doc(f)["mesh"] == "ON"))
        assert isinstance(state["free_model_ram"], int) and set(state["speed"]) == measured
        assert state["speed"] == {t: round(o.rate, 2) for t, o in fridge.mesh.offers.items()}
        # The fridge's discovery connection dies: Home Assistant hears its will.
        assert fridge.ha_discovery is not None
        fridge.ha_discovery.abort()
        await ha.next(fridge_topics.availability, lambda f: f.payload == b"offline")
        await ha.next(fridge_topics.availability, lambda f: f.payload == b"online")
        # The hub revokes the fridge: the running hub clears its config; the fridge, seeing its config
        # emptied by someone else, clears its state and availability and stays silent.
        HouseholdState(tmp_path / "hub").revoke([fridge_id])
        await hub.mesh.endpoint.publish_presence()  # picks the new CRL up from disk
        await ha.next(fridge_topics.config, lambda f: f.payload == b"")
        await fridge.ha_discovery.wait_stopped(WAIT)
        assert fridge.ha_discovery.state is PublisherState.WITHDRAWN
    # Both stopped: the hub said offline; nothing of the fridge is left on the broker.
    async with Observer(broker.port, "homeassistant/#", "hearth/ha/#") as late:
        left = {f.topic: f.payload for f in await late.until_marker()}
    assert left[hub_topics.availability] == b"offline" and hub_topics.config in left
    assert not [t for t in left if fridge_oid in t], left
    # N13: nothing Home Assistant's broker carried names a mesh device id (topics show those).
    named = [
        f.topic
        for f in ha.seen
        if any(i.encode() in f.topic.encode() + f.payload for i in (hub_id, fridge_id))
    ]
    assert ha.seen and named == []


async def test_nothing_is_published_when_discovery_is_off(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    cfg = config("hub", broker.port, "hub")
    cfg = cfg.model_copy(update={"mesh": cfg.mesh.model_copy(update={"self_benchmark": False})})
    assert cfg.home_assistant.mqtt_discovery is False  # the default
    async with (
        Observer(broker.port, "homeassistant/#", "hearth/ha/#") as ha,
        service(tmp_path / "hub", cfg, store) as hub,
    ):
        await hub.mesh.endpoint.publish_presence()  # the agent is up and talking on the mesh
        assert hub.ha_discovery is None
        assert await ha.until_marker() == []


async def test_revoke_from_the_command_line_removes_the_device_from_home_assistant(
    tmp_path: Path, broker: Mosquitto, hearth_env: dict[str, str]
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    fridge_id = HouseholdState(tmp_path / "fridge").identity.device_id
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(
        f'[agent]\nname = "hub"\nprofile = "hub"\n[mesh]\nenabled = true\n'
        f'broker = "mqtt://127.0.0.1:{broker.port}"\nstate_dir = "{tmp_path / "hub"}"\n'
        "[home_assistant]\nmqtt_discovery = true\n"
    )
    key = bytes(HouseholdState(tmp_path / "hub").membership()[0].root_key)
    device = fridge()
    device.desc = device.desc.model_copy(update={"object_id": discovery_id(fridge_id, key)})
    topics, legacy = Topics(object_id=device.desc.object_id), Topics(object_id=fridge_id)
    async with publishing(device, broker.port):  # the fridge's agent was here once
        pass
    old = fridge()  # and an older version, under its device id
    old.desc = old.desc.model_copy(update={"object_id": fridge_id})
    async with publishing(old, broker.port):
        pass
    async with Observer(broker.port, *topics.all_retained(), *legacy.all_retained()) as ha:
        assert len(await ha.until_marker()) == 6
        done = await asyncio.to_thread(hearth, "household", "revoke", "fridge", "-c", str(hub_toml),
                                       env=hearth_env)  # fmt: skip
        ok(done)
        assert "removed 'fridge' from Home Assistant" in done.stderr
        for topic in (*topics.all_retained(), *legacy.all_retained()):
            await ha.next(topic, lambda f: f.payload == b"")


async def test_an_agent_outside_a_household_publishes_under_its_name(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    cfg = load_config(None, {
        "HEARTH_AGENT__NAME": "Küche Kühlschrank", "HEARTH_AGENT__PROFILE": "fridge-panel",
        "HEARTH_HOME_ASSISTANT__MQTT_DISCOVERY": "true",
        "HEARTH_HOME_ASSISTANT__MQTT_BROKER": f"mqtt://127.0.0.1:{broker.port}",
    })  # fmt: skip
    topics = Topics(object_id=object_id_for(None, "Küche Kühlschrank"))
    async with Observer(broker.port, topics.config) as ha, service(tmp_path / "alone", cfg, store) as agent:
        assert agent.service is None and agent.ha_discovery is not None
        published = doc(await ha.next(topics.config))
    assert published["dev"]["name"] == "Küche Kühlschrank" and "via_device" not in published["dev"]
    assert set(published["cmps"]) == {"queue_depth", "free_model_ram"}  # no mesh, no mesh sensors


def test_discovery_needs_a_broker_and_readable_tls_files(tmp_path: Path) -> None:
    from edge_agent.ha_discovery.agent import client_factory

    with pytest.raises(ConfigError, match=r"not on a household mesh, so set \[home_assistant\] mqtt_broker"):
        client_factory(load_config(None, {}), tmp_path, on_mesh=False)
    missing = tmp_path / "nope.crt"
    cfg = load_config(None, {"HEARTH_HOME_ASSISTANT__MQTT_BROKER": "mqtts://ha.lan:8883",
                             "HEARTH_HOME_ASSISTANT__MQTT_TLS_CA": str(missing)})  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(f"mqtt_tls_ca {missing}")):
        client_factory(cfg, tmp_path, on_mesh=False)


def test_revoke_still_succeeds_when_home_assistant_s_broker_is_down(
    tmp_path: Path, hearth_env: dict[str, str]
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(
        f'[agent]\nname = "hub"\nprofile = "hub"\n[mesh]\nenabled = true\n'
        f'broker = "mqtt://127.0.0.1:{free_port()}"\nstate_dir = "{tmp_path / "hub"}"\n'
        "[home_assistant]\nmqtt_discovery = true\n"
    )
    done = hearth("household", "revoke", "fridge", "-c", str(hub_toml), env=hearth_env)
    ok(done)
    assert (
        "revoked 'fridge'" in done.stderr and "could not remove 'fridge' from Home Assistant" in done.stderr
    )
    assert (
        HouseholdState(tmp_path / "fridge").identity.device_id
        in HouseholdState(tmp_path / "hub").load().crl.revoked
    )


# -- issue 21, N13: ids that do not link to the mesh, usage per window only; supervision -------------------


def test_discovery_ids_are_keyed_stable_and_unlinkable_to_device_ids() -> None:
    device, other_device, other_key = "0123abcd" * 4, "4567cdef" * 4, bytes(range(1, 33))
    oid = discovery_id(device, KEY)
    assert re.fullmatch(r"[0-9a-f]{32}", oid) and oid == discovery_id(device, KEY)  # stable
    assert oid != device and device not in oid and oid[:8] not in device
    assert discovery_id(other_device, KEY) != oid  # per device
    assert discovery_id(device, other_key) != oid  # and per household: nothing to compute without the key
    with pytest.raises(ValueError, match=r"^a paired device's discovery id needs the household key$"):
        object_id_for(device, "fridge")
    with pytest.raises(
        ValueError, match=r"^the household key for discovery ids is the 32-byte root public key$"
    ):
        discovery_id(device, b"short")


class Clock:
    """Wall-clock seconds the test moves (the usage windows are aligned to it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_usage_is_published_once_per_usage_window_not_per_request(broker: Mosquitto) -> None:
    """Queue depth, counters and free RAM change with every request; what the broker sees changes at
    most once per window (15 minutes by default), so it cannot tell when requests came. Other fields
    (mesh connectivity) still go out when they change."""
    device, clock = fridge(requests_served=3), Clock(9_000.0)  # the start of a 900 s window
    topics = Topics(object_id=device.desc.object_id)
    settings = FAST.model_copy(update={"usage_interval_s": 900.0})
    async with (
        Observer(broker.port, topics.state) as ha,
        DiscoveryPublisher(device, connector(broker.port), settings, clock=clock) as publisher,
    ):
        await publisher.wait_online(WAIT)
        assert doc(await ha.next(topics.state))["requests_served"] == 3
        for served in range(4, 40):  # requests come in during the window, one at a time
            clock.now += 10
            device.state = device.state.model_copy(update={"requests_served": served, "queue_depth": 1,
                                                           "free_model_ram": 100})  # fmt: skip
            calls = device.calls
            publisher.refresh()
            await device.wait_calls(calls + 1)  # the publisher looked at the new state
        device.state = device.state.model_copy(update={"mesh": "OFF"})
        publisher.refresh()
        off = doc(await ha.next(topics.state))  # connectivity goes out at once, usage still as sampled
        assert (off["mesh"], off["requests_served"], off["queue_depth"], off["free_model_ram"]) == (
            "OFF",
            3,
            0,
            300,
        )
        clock.now = 9_900.0  # the next window: one sample of where things stand
        publisher.refresh()
        sampled = doc(await ha.next(topics.state))
        assert (sampled["requests_served"], sampled["queue_depth"], sampled["free_model_ram"]) == (39, 1, 100)
        assert [f for f in await ha.until_marker() if f.topic == topics.state] == []
    assert [doc(f)["requests_served"] for f in ha.seen if f.topic == topics.state and f.payload] == [3, 3, 39]


async def test_a_document_under_the_old_id_is_cleared_and_only_if_it_is_there(broker: Mosquitto) -> None:
    """Before N13 a paired device was published under its device id: the device clears that document
    when it finds one; the hub's clear of a revoked device touches an old id only if it is there."""
    old_id, absent_id = "0123abcd" * 4, "4567cdef" * 4
    old = fridge()
    old.desc = old.desc.model_copy(update={"object_id": old_id})
    async with publishing(old, broker.port):  # what an older version left behind
        pass
    device = fridge()
    device.desc = device.desc.model_copy(update={"object_id": discovery_id(old_id, KEY)})
    legacy = Topics(object_id=old_id)
    async with Observer(broker.port, "homeassistant/#", "hearth/ha/#") as ha:
        async with DiscoveryPublisher(device, connector(broker.port), FAST, legacy_ids=[old_id]) as publisher:
            await publisher.wait_online(WAIT)
            for topic in legacy.all_retained():
                await ha.next(topic, lambda f: f.payload == b"")
        await clear_devices(connector(broker.port), [], "homeassistant", if_present=[absent_id, old_id])
        seen = await ha.until_marker()
    assert not [f for f in ha.seen if absent_id in f.topic], "cleared an id that was never there"
    assert [f for f in seen if old_id in f.topic and f.payload] == []
    async with Observer(broker.port, *legacy.all_retained()) as late:
        assert await late.until_marker() == []  # nothing left under the old id


async def test_a_bug_in_the_discovery_loop_is_supervised_and_publishing_goes_on(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    class Buggy(Device):
        def __call__(self) -> tuple[DeviceDescription, DeviceState]:
            if self.calls == 3:  # one bad snapshot (a bug somewhere in the agent)
                self.calls += 1
                raise RuntimeError("a bug")
            return super().__call__()

    base = fridge()
    device = Buggy(base.desc, base.state)
    supervisor = Supervisor(initial_backoff_s=0.01)
    topics = Topics(object_id=device.desc.object_id)
    async with (
        Observer(broker.port, topics.state) as ha,
        DiscoveryPublisher(device, connector(broker.port), FAST, supervisor=supervisor) as publisher,
    ):
        await ha.next(topics.state)
        await device.wait_calls(6)  # past the bad one
        device.state = device.state.model_copy(update={"mesh": "OFF"})
        publisher.refresh()
        assert doc(await ha.next(topics.state, lambda f: doc(f)["mesh"] == "OFF"))["queue_depth"] == 0
        assert publisher.state is PublisherState.ONLINE
    assert supervisor.restarts("ha-discovery") == 1
    assert supervisor.report().loops[0].last_error == "RuntimeError: a bug"
