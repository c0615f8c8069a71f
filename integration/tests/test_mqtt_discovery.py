"""Hearth agents in Home Assistant through HA's own MQTT integration, no custom component: Hearth's real
discovery publisher (edge_agent.ha_discovery) on a real Mosquitto, HA's real `mqtt` integration reading
it. The hub and a fridge appear as devices (the fridge behind the hub) with their sensors and values,
under discovery ids that do not show their mesh device ids; a change of load reaches HA at the next
usage window; ``offline`` makes them unavailable; the fridge's decommissioning removes it, entities and
all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.ha_discovery import (
    DeviceDescription,
    DeviceState,
    DiscoveryPublisher,
    DiscoverySettings,
)
from edge_agent.ha_discovery.payload import discovery_id
from edge_agent.mesh.settings import broker_host_port
from edge_agent.mesh.transports.mqtt import MqttClient
from homeassistant.const import MATCH_ALL
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

KEY = bytes(range(32))  # the household's root public key, which the discovery ids are keyed with
HUB_MESH_ID, FRIDGE_MESH_ID = "a1" * 16, "f0" * 16
HUB_ID, FRIDGE_ID = discovery_id(HUB_MESH_ID, KEY), discovery_id(FRIDGE_MESH_ID, KEY)
FAST = DiscoverySettings(interval_s=0.05, reconnect_min_s=0.05, reconnect_max_s=0.5, io_timeout_s=5)


class Clock:
    """Wall-clock seconds the test moves: usage is published once per 15-minute window of it."""

    def __init__(self) -> None:
        self.now = 9_000.0

    def __call__(self) -> float:
        return self.now


async def until(hass: HomeAssistant, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait for an event (a state change, a registry update) after which ``condition`` holds."""
    changed = asyncio.Event()

    @callback
    def wake(_: Event[Any]) -> None:
        changed.set()

    unsubscribe = hass.bus.async_listen(MATCH_ALL, wake)
    try:
        async with asyncio.timeout(timeout):
            while True:
                await hass.async_block_till_done()
                if condition():
                    return
                changed.clear()
                await changed.wait()
    finally:
        unsubscribe()


class Agent:
    """What one agent reports to its publisher (an agent's snapshot; the test changes it)."""

    def __init__(self, desc: DeviceDescription, state: DeviceState) -> None:
        self.desc, self.state = desc, state

    def __call__(self) -> tuple[DeviceDescription, DeviceState]:
        return self.desc, self.state


def device(object_id: str, name: str, model: str, cls: str, via: str | None, **state: Any) -> Agent:
    desc = DeviceDescription(object_id=object_id, name=name, model=model, device_class=cls,
                             sw_version="0.1.0", via=via, on_mesh=True)  # fmt: skip
    values: dict[str, Any] = {"queue_depth": 0, "requests_served": 0, "requests_offloaded": 0,
                              "free_model_ram": 1000, "speed": {}, "mesh": "ON"} | state  # fmt: skip
    return Agent(desc, DeviceState(**values))


def entity(hass: HomeAssistant, object_id: str, key: str) -> str | None:
    platform = "binary_sensor" if key == "mesh" else "sensor"
    return er.async_get(hass).async_get_entity_id(platform, "mqtt", f"hearth_{object_id}_{key}")


def value(hass: HomeAssistant, object_id: str, key: str) -> str | None:
    entity_id = entity(hass, object_id, key)
    state = hass.states.get(entity_id) if entity_id else None
    return state.state if state else None


async def test_agents_appear_as_devices_go_unavailable_and_are_removed(
    hass: HomeAssistant, mosquitto: str
) -> None:
    host, port = broker_host_port(mosquitto)
    # HA's mqtt integration reads configuration.yaml for YAML-configured items: an empty one.
    await hass.async_add_executor_job(Path(hass.config.path("configuration.yaml")).write_text, "")
    entry = MockConfigEntry(domain="mqtt", data={"broker": host, "port": port}, version=1, minor_version=2)
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)

    def connect(client_id: str, will: tuple[str, bytes] | None) -> MqttClient:
        return MqttClient(host, port, client_id=client_id, will=will)

    hub = device(HUB_ID, "hub", "hub", "hub", None, speed={"generate": 21.5, "embed": 480.0})
    fridge = device(FRIDGE_ID, "Küche Kühlschrank", "fridge-panel", "appliance", HUB_ID, queue_depth=2,
                    requests_offloaded=5, free_model_ram=212, speed={"translate": 9.25})  # fmt: skip
    registry = dr.async_get(hass)
    clock = Clock()
    assert HUB_MESH_ID not in HUB_ID and FRIDGE_MESH_ID not in FRIDGE_ID
    async with DiscoveryPublisher(hub, connect, FAST, clock=clock) as hub_publisher:
        await until(hass, lambda: value(hass, HUB_ID, "generate_speed") == "21.5")
        hub_device = registry.async_get_device(identifiers={("mqtt", f"hearth_{HUB_ID}")})
        assert hub_device is not None
        assert (hub_device.name, hub_device.manufacturer, hub_device.model, hub_device.sw_version) == (
            "hub", "Hearth", "hub", "0.1.0"
        )  # fmt: skip
        async with DiscoveryPublisher(fridge, connect, FAST, clock=clock) as fridge_publisher:
            await until(hass, lambda: value(hass, FRIDGE_ID, "mesh") == "on")
            fridge_device = registry.async_get_device(identifiers={("mqtt", f"hearth_{FRIDGE_ID}")})
            assert fridge_device is not None and fridge_device.via_device_id == hub_device.id
            assert (fridge_device.name, fridge_device.model, fridge_device.model_id) == (
                "Küche Kühlschrank", "fridge-panel", "appliance"
            )  # fmt: skip
            # Its sensors, with the agent's values, units and categories.
            entities = er.async_entries_for_device(er.async_get(hass), fridge_device.id)
            assert {e.unique_id for e in entities} == {
                f"hearth_{FRIDGE_ID}_{k}" for k in ("queue_depth", "requests_served", "requests_offloaded",
                                                    "free_model_ram", "translate_speed", "mesh")
            }  # fmt: skip
            assert value(hass, FRIDGE_ID, "queue_depth") == "2"
            assert value(hass, FRIDGE_ID, "requests_offloaded") == "5"
            assert value(hass, FRIDGE_ID, "translate_speed") == "9.25"
            ram = hass.states.get(entity(hass, FRIDGE_ID, "free_model_ram") or "")
            assert ram is not None and ram.state == "212" and ram.attributes["unit_of_measurement"] == "MB"
            assert ram.attributes["device_class"] == "data_size"
            ram_entry = er.async_get(hass).async_get(ram.entity_id)
            assert ram_entry is not None and ram_entry.entity_category == "diagnostic"
            assert ram.entity_id.startswith("sensor.kuche_kuhlschrank_")  # a safe id from a unicode name
            # A change of load reaches Home Assistant with the next usage window.
            fridge.state = fridge.state.model_copy(update={"queue_depth": 0, "requests_served": 1})
            clock.now += FAST.usage_interval_s
            fridge_publisher.refresh()
            await until(hass, lambda: value(hass, FRIDGE_ID, "requests_served") == "1")
            assert value(hass, FRIDGE_ID, "queue_depth") == "0"
            # The fridge's connection dies: its last will makes every sensor unavailable.
            fridge_publisher.abort()
            await until(hass, lambda: value(hass, FRIDGE_ID, "queue_depth") == "unavailable")
            assert value(hass, FRIDGE_ID, "mesh") == "unavailable"
            assert value(hass, HUB_ID, "queue_depth") == "0"  # the hub is unaffected
            # It reconnects by itself and is available again.
            await until(hass, lambda: value(hass, FRIDGE_ID, "queue_depth") == "0")
            # Decommissioned: the empty retained config removes the device and its entities.
            await fridge_publisher.decommission()
            await until(
                hass,
                lambda: registry.async_get_device(identifiers={("mqtt", f"hearth_{FRIDGE_ID}")}) is None,
            )
            assert entity(hass, FRIDGE_ID, "queue_depth") is None
        # A clean stop of the hub's agent says offline itself.
        await hub_publisher.wait_online(5)
    await until(hass, lambda: value(hass, HUB_ID, "queue_depth") == "unavailable")
    assert await hass.config_entries.async_unload(entry.entry_id)
