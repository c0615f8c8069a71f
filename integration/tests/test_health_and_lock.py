"""Issue 21 in Home Assistant: each device's health (restarts and drops of its own loops, from its signed
presence) as diagnostic sensors, disabled by default; and Home Assistant's membership held by one
process at a time (the `StateLock` the agent takes), with a clear reason and a retry when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_agent.errors import StateInUseError
from edge_agent.mesh.files import StateLock
from edge_agent.mesh.member import MeshMember
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er

from custom_components.hearth.const import DOMAIN

from .conftest import Hub, add_member
from .test_devices import FAST, state_of, until
from .test_lifecycle import _entry_at


async def test_each_device_shows_its_restarts_and_drops_as_diagnostic_sensors(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    fridge = await hass.async_add_executor_job(
        lambda: MeshMember(
            add_member(hub, tmp_path / "fridge", "fridge-panel", serves=[], device_class="appliance"),
            hub.broker,
            settings=FAST,
        )
    )
    fridge_id = fridge.certificate.device_id
    registry = er.async_get(hass)
    async with fridge:
        await until(hass, entry, lambda: state_of(hass, fridge_id, "connectivity") == "on")
        for key in ("loop_restarts", "dropped_items"):  # diagnostic, and disabled until the user wants them
            eid = registry.async_get_entity_id("sensor", DOMAIN, f"{fridge_id}-{key}")
            assert eid is not None
            row = registry.async_get(eid)
            assert row is not None and row.entity_category is EntityCategory.DIAGNOSTIC
            assert row.disabled_by is er.RegistryEntryDisabler.INTEGRATION
            registry.async_update_entity(eid, disabled_by=None)
        await hass.config_entries.async_reload(entry.entry_id)
        await hass.async_block_till_done()
        entry = hass.config_entries.async_get_entry(entry.entry_id)  # type: ignore[assignment]
        await until(hass, entry, lambda: state_of(hass, fridge_id, "dropped_items") == "0")
        assert state_of(hass, fridge_id, "loop_restarts") == "0"
        fridge.supervisor.drop("mesh-dispatch", "ValueError")  # the fridge dropped two items it could not
        fridge.supervisor.drop("mesh-dispatch", "KeyError")  # handle: its next presence says so
        await until(hass, entry, lambda: state_of(hass, fridge_id, "dropped_items") == "2")
        assert state_of(hass, fridge_id, "loop_restarts") == "0"


async def test_one_process_per_membership(hass: HomeAssistant, hub: Hub, tmp_path: Path) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    home = Path(hass.config.path(".storage", "hearth", entry.unique_id))
    counters = (home / "counters" / "send-counter.json").read_bytes()
    # Home Assistant holds it: a second member on it (another Home Assistant, a `hearth` process) is refused.
    with pytest.raises(StateInUseError, match="is in use by another Hearth process"):
        MeshMember(home, hub.broker)
    assert (home / "counters" / "send-counter.json").read_bytes() == counters  # not one counter reserved
    assert entry.state is ConfigEntryState.LOADED and entry.runtime_data.connected  # it serves on
    # Someone else holds it: Home Assistant says so and retries, and sets up once it is free.
    assert await hass.config_entries.async_unload(entry.entry_id)
    other = StateLock(home)
    other.acquire()
    try:
        assert not await hass.config_entries.async_setup(entry.entry_id)
        assert entry.state is ConfigEntryState.SETUP_RETRY
        assert "is in use by another Hearth process" in str(entry.reason)
    finally:
        other.release()
    await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
