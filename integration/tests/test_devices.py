"""One Home Assistant device per household device, from the mesh's signed presence: devices appear as
the household grows, their sensors go unavailable when they leave the mesh, and a revoked device is
removed (no ghost devices). Real Mosquitto; the other devices are real mesh members (the library HA
itself uses), so no process but the broker and the hub's `hearth` runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.state import HouseholdState
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.dispatcher import async_dispatcher_connect

from custom_components.hearth.const import DOMAIN
from custom_components.hearth.runtime import signal_updated

from .conftest import Hub, add_member
from .test_config_flow import _paired_entry

FAST = MeshSettings(presence_interval_s=0.5)


async def until(
    hass: HomeAssistant, entry: ConfigEntry, condition: Callable[[], bool], timeout: float = 15
) -> None:
    """Wait for the entry's watcher to signal a change after which ``condition`` holds."""
    changed = asyncio.Event()

    @callback
    def wake() -> None:
        changed.set()

    unsubscribe = async_dispatcher_connect(hass, signal_updated(entry.entry_id), wake)
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


def state_of(hass: HomeAssistant, device_id: str, key: str) -> str | None:
    entity_id = er.async_get(hass).async_get_entity_id(
        "binary_sensor" if key == "connectivity" else "sensor", DOMAIN, f"{device_id}-{key}"
    )
    state = hass.states.get(entity_id) if entity_id else None
    return state.state if state else None


async def test_devices_appear_go_offline_and_a_revoked_one_is_removed(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _paired_entry(hass, hub)

    def members() -> tuple[MeshMember, MeshMember]:  # file work: in the executor
        home = add_member(hub, tmp_path / "fridge", "fridge-panel", serves=["embed", "translate"],
                          device_class="appliance")  # fmt: skip
        return (MeshMember(hub.home / "state", hub.broker, settings=FAST),
                MeshMember(home, hub.broker, settings=FAST))  # fmt: skip

    hub_member, fridge = await hass.async_add_executor_job(members)
    registry = dr.async_get(hass)
    hub_id, fridge_id = hub_member.certificate.device_id, fridge.certificate.device_id
    async with hub_member:
        await until(hass, entry, lambda: state_of(hass, hub_id, "connectivity") == "on")
        hub_device = registry.async_get_device(identifiers={(DOMAIN, hub_id)})
        assert hub_device is not None and hub_device.name == "hub" and hub_device.model == "hub"
        assert state_of(hass, hub_id, "queue_depth") == "0"
        # A device joins the household: it appears, behind the hub.
        await fridge.__aenter__()
        try:
            await until(hass, entry, lambda: state_of(hass, fridge_id, "connectivity") == "on")
            device = registry.async_get_device(identifiers={(DOMAIN, fridge_id)})
            assert (
                device is not None
                and device.model == "fridge-panel"
                and device.via_device_id == hub_device.id
            )
            assert state_of(hass, fridge_id, "translate_speed") is not None  # it serves translate
            assert state_of(hass, fridge_id, "generate_speed") is None  # it does not serve generate
        finally:
            await fridge.close()  # it leaves (its departure notice): offline, values unavailable
        await until(hass, entry, lambda: state_of(hass, fridge_id, "connectivity") == "off")
        assert state_of(hass, fridge_id, "queue_depth") == "unavailable"
        # The hub revokes it; its next presence carries the CRL: the device is removed.
        crl = await hass.async_add_executor_job(
            lambda: HouseholdState(hub.home / "state").revoke([fridge_id])
        )
        hub_member.membership.apply_revocations(crl)
        await until(hass, entry, lambda: registry.async_get_device(identifiers={(DOMAIN, fridge_id)}) is None)
        assert fridge_id in entry.runtime_data.member.membership.revoked


async def test_diagnostics_redact_keys_signatures_and_paths(hass: HomeAssistant, hub: Hub) -> None:
    from custom_components.hearth.diagnostics import async_get_config_entry_diagnostics

    entry = await _paired_entry(hass, hub)
    hub_member = await hass.async_add_executor_job(
        lambda: MeshMember(hub.home / "state", hub.broker, settings=FAST)
    )
    async with hub_member:
        hub_id = hub_member.certificate.device_id
        await until(hass, entry, lambda: state_of(hass, hub_id, "connectivity") == "on")
        diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    text = str(diagnostics)
    member = entry.runtime_data.member
    for secret in (member.certificate.sign_key, member.certificate.signature, str(hub.home),
                   hass.config.path(".storage"), hub_member.certificate.signature):  # fmt: skip
        assert secret not in text
    assert diagnostics["certificate"]["sign_key"] == "**REDACTED**"
    assert [p["certificate"]["name"] for p in diagnostics["peers"]] == ["hub"]
