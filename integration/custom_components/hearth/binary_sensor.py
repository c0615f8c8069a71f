"""Connectivity of every household device, as the mesh sees it (its signed presence is fresh)."""

from __future__ import annotations

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry
from .entity import HearthEntity, add_per_device

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    runtime = entry.runtime_data
    add_per_device(
        hass,
        entry,
        async_add_entities,
        lambda c: [HearthConnectivity(runtime, entry.entry_id, c, "connectivity")],
    )


class HearthConnectivity(HearthEntity, BinarySensorEntity):
    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_entity_category = EntityCategory.DIAGNOSTIC

    @property
    def available(self) -> bool:
        """Unknown, not off, while Home Assistant itself is off the mesh."""
        return self.runtime.connected

    @property
    def is_on(self) -> bool:
        return self.runtime.peer(self.device_id) is not None
