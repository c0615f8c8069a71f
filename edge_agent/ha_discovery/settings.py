"""MQTT discovery's settings: what the publisher takes from the agent's ``[home_assistant]`` section.

Built at the root from the section (`HomeAssistantSection.discovery_settings`), as the mesh takes
`MeshSettings`: the publisher never reads configuration. Pydantic only, so the config module (below
this part) builds it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DiscoverySettings"]


class DiscoverySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(default="homeassistant", pattern=r"^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$")
    interval_s: float = Field(default=5.0, gt=0, le=3600)
    """How often the state is checked for changes."""
    heartbeat_s: float = Field(default=300.0, gt=0, le=86400)
    """An unchanged state is re-sent this often."""
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    io_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Longest one connect or publish may take before the connection is given up and retried."""
    usage_interval_s: float = Field(default=900.0, gt=0, le=86400)
    """The usage window: queue depth, counters and free RAM are sampled once per window of wall-clock
    time (aligned to multiples of it), so published states do not give a timeline of requests."""
    max_pending_clears: int = Field(default=256, ge=1, le=65536)
    """Revoked devices' documents waiting to be cleared (revocations come from peers' presence: a bound
    on what they can make this device hold); past it, more are skipped with a warning."""
