"""One Home Assistant device per household device, and the base of their entities."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edge_agent.mesh import DeviceCertificate
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity import Entity
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .const import DOMAIN
from .runtime import HearthRuntime, signal_updated


def device_info(cert: DeviceCertificate, hub_id: str | None) -> DeviceInfo:
    info = DeviceInfo(
        identifiers={(DOMAIN, cert.device_id)},
        name=cert.name,
        manufacturer="Hearth",
        model=cert.profile,
        model_id=cert.device_class,
        serial_number=cert.device_id,
    )
    if hub_id is not None and hub_id != cert.device_id:
        info["via_device"] = (DOMAIN, hub_id)
    return info


class HearthEntity(Entity):
    """Pushed, never polled: the entry's watcher signals every change of the household's peers."""

    _attr_has_entity_name = True
    _attr_should_poll = False

    def __init__(self, runtime: HearthRuntime, entry_id: str, cert: DeviceCertificate, key: str) -> None:
        self.runtime = runtime
        self.device_id = cert.device_id
        self._entry_id = entry_id
        self._attr_unique_id = f"{cert.device_id}-{key}"
        self._attr_translation_key = key
        hub = next((c.device_id for c in runtime.devices() if c.device_class == "hub"), None)
        self._attr_device_info = device_info(cert, hub)

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(
            async_dispatcher_connect(self.hass, signal_updated(self._entry_id), self.async_write_ha_state)
        )


def add_per_device(
    hass: HomeAssistant,
    entry: ConfigEntry[HearthRuntime],
    async_add_entities: AddConfigEntryEntitiesCallback,
    make: Callable[[DeviceCertificate], Iterable[Entity]],
) -> None:
    """Entities for every household device now, and for each device that joins later (dynamic devices)."""
    runtime = entry.runtime_data
    known: set[str] = set()

    @callback
    def add_new() -> None:
        new = [c for c in runtime.devices() if c.device_id not in known]
        known.update(c.device_id for c in new)
        async_add_entities(entity for c in new for entity in make(c))

    add_new()
    entry.async_on_unload(async_dispatcher_connect(hass, signal_updated(entry.entry_id), add_new))
