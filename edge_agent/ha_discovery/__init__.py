"""Home Assistant MQTT discovery: an agent shows up in Home Assistant as a device with sensors, through
HA's stock MQTT integration (no custom component). Off by default (``[home_assistant] mqtt_discovery``):
discovery documents and states are plaintext on the broker.

`payload` builds the documents (pure functions, pydantic models); `publisher` keeps them on a broker
(its own connection, last will, HA's birth message, no ghosts); `agent` wires a running `Hearth` in.
"""

from edge_agent.ha_discovery.payload import (
    DeviceDescription,
    DeviceState,
    DiscoveryPayload,
    Topics,
    discovery_payload,
    object_id_for,
)
from edge_agent.ha_discovery.publisher import (
    DiscoveryPublisher,
    DiscoverySettings,
    PublisherState,
    clear_devices,
)

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
