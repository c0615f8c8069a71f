"""Home Assistant MQTT discovery: an agent shows up in Home Assistant as a device with sensors, through
HA's stock MQTT integration (no custom component). Off by default (``[home_assistant] mqtt_discovery``):
discovery documents and states are plaintext on the broker.

`payload` builds the documents (pure functions, pydantic models); `publisher` keeps them on a broker
(its own connection, last will, HA's birth message, no ghosts); `settings` is what the publisher takes
from the agent's config (built at the root); `agent` wires a running `Hearth` in.

Names resolve lazily, so the config module (which builds `DiscoverySettings`) loads no publisher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent._exports import lazy_exports

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from edge_agent.ha_discovery.payload import (
        DeviceDescription,
        DeviceState,
        DiscoveryPayload,
        Topics,
        discovery_payload,
        object_id_for,
    )
    from edge_agent.ha_discovery.publisher import DiscoveryPublisher, PublisherState, clear_devices
    from edge_agent.ha_discovery.settings import DiscoverySettings

_PAYLOAD = "edge_agent.ha_discovery.payload"
_PUBLISHER = "edge_agent.ha_discovery.publisher"
_EXPORTS = {
    "DeviceDescription": _PAYLOAD,
    "DeviceState": _PAYLOAD,
    "DiscoveryPayload": _PAYLOAD,
    "Topics": _PAYLOAD,
    "discovery_payload": _PAYLOAD,
    "object_id_for": _PAYLOAD,
    "DiscoveryPublisher": _PUBLISHER,
    "PublisherState": _PUBLISHER,
    "clear_devices": _PUBLISHER,
    "DiscoverySettings": "edge_agent.ha_discovery.settings",
}

__all__ = [
    "DeviceDescription",
    "DeviceState",
    "DiscoveryPayload",
    "DiscoveryPublisher",
    "DiscoverySettings",
    "PublisherState",
    "Topics",
    "clear_devices",
    "discovery_payload",
    "object_id_for",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
