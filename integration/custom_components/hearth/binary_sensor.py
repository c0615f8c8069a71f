"""Connectivity of every household device, as the mesh sees it (its signed presence is fresh)."""

from __future__ import annotations

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry
from .entity import HearthEntity
from .runtime import signal_updated

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    runtime = entry.runtime_data
    known: set[str] = set()

    @callback
    def add_new() -> None:  # devices appear as the household grows (dynamic devices)
        new = [c for c in runtime.devices() if c.device_id not in known]
        known.update(c.device_id for c in new)
        async_add_entities(HearthConnectivity(runtime, entry.entry_id, c, "connectivity") for c in new)

    add_new()
    entry.async_on_unload(async_dispatcher_connect(hass, signal_updated(entry.entry_id), add_new))


class HearthConnectivity(HearthEntity, BinarySensorEntity):
    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_entity_category = EntityCategory.DIAGNOSTIC

    @property
    def is_on(self) -> bool:
        return self.runtime.peer(self.device_id) is not None
