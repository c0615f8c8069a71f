"""What each household device reports in its signed presence: queue depth, free model RAM, and the
speed it measured for the tasks it serves. Unavailable while the device is not on the mesh."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.mesh import DeviceCertificate, Peer
from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import EntityCategory, UnitOfInformation
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry
from .entity import HearthEntity, add_per_device
from .runtime import HearthRuntime

PARALLEL_UPDATES = 0


@dataclass(frozen=True, kw_only=True)
class HearthSensorDescription(SensorEntityDescription):
    value: Callable[[Peer], float | int | None]
    applies: Callable[[DeviceCertificate], bool] = lambda cert: True


def _rate(task: str) -> Callable[[Peer], float | None]:
    def value(peer: Peer) -> float | None:
        offer = peer.offer(task)  # type: ignore[arg-type]
        return round(offer.rate, 1) if offer is not None else None

    return value


SENSORS: tuple[HearthSensorDescription, ...] = (
    HearthSensorDescription(
        key="queue_depth", state_class=SensorStateClass.MEASUREMENT, value=lambda p: p.presence.queue_depth
    ),
    HearthSensorDescription(
        key="requests_served",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value=lambda p: p.presence.served,
        applies=lambda c: bool(c.serves),
    ),
    HearthSensorDescription(
        key="requests_offloaded",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value=lambda p: p.presence.offloaded,
    ),
    HearthSensorDescription(
        key="free_model_ram",
        entity_registry_enabled_default=False,
        device_class=SensorDeviceClass.DATA_SIZE,
        native_unit_of_measurement=UnitOfInformation.MEGABYTES,
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda p: p.presence.free_model_ram_mb,
    ),
    # Health (issue 21): the device's own loops as its presence reports them (edge_agent.supervision):
    # restarts after unexpected errors and items dropped since its agent started. Above zero is worth a
    # look at that device's log; a device that does not report them shows unknown.
    HearthSensorDescription(
        key="loop_restarts",
        entity_registry_enabled_default=False,
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda p: p.presence.health.restarts if p.presence.health is not None else None,
    ),
    HearthSensorDescription(
        key="dropped_items",
        entity_registry_enabled_default=False,
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda p: p.presence.health.dropped if p.presence.health is not None else None,
    ),
    HearthSensorDescription(
        key="generate_speed",
        native_unit_of_measurement="tok/s",
        state_class=SensorStateClass.MEASUREMENT,
        value=_rate("generate"),
        applies=lambda c: "generate" in c.serves,
    ),
    HearthSensorDescription(
        key="translate_speed",
        native_unit_of_measurement="sentences/s",
        state_class=SensorStateClass.MEASUREMENT,
        value=_rate("translate"),
        applies=lambda c: "translate" in c.serves,
    ),
)


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    runtime = entry.runtime_data
    add_per_device(
        hass, entry, async_add_entities,
        lambda c: [HearthSensor(runtime, entry.entry_id, c, d) for d in SENSORS if d.applies(c)],
    )  # fmt: skip


class HearthSensor(HearthEntity, SensorEntity):
    entity_description: HearthSensorDescription

    def __init__(
        self,
        runtime: HearthRuntime,
        entry_id: str,
        cert: DeviceCertificate,
        description: HearthSensorDescription,
    ) -> None:
        super().__init__(runtime, entry_id, cert, description.key)
        self.entity_description = description

    @property
    def available(self) -> bool:
        return self.runtime.peer(self.device_id) is not None

    @property
    def native_value(self) -> float | int | None:
        peer = self.runtime.peer(self.device_id)
        return self.entity_description.value(peer) if peer is not None else None
