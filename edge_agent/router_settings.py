"""The router's settings: routing policy and the limits that bound what failing peers cost a request.

One frozen value handed to the `Router` by whoever assembles it (the agent builds it from its
``[routing]`` section with `RoutingSection.settings`; a Home Assistant member uses the defaults), as the
mesh takes `MeshSettings`: the router never reads configuration itself. Pydantic only, so the config
module (below the router) can build it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.tasks import DeviceClass, Task

__all__ = ["RouterSettings", "RoutingPolicy"]


class RoutingPolicy(BaseModel):
    """Where this device's own requests run: locally, or on the peer expected to finish first (the keys
    of the ``[routing]`` section, which is this model)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "local-only", "offload-first"] = "auto"
    prefer_local: bool = False
    """Run locally whenever this device can serve the task, even if a peer would be faster."""
    never_offload: list[Task] = Field(default_factory=list)
    """Tasks that must never leave this device (e.g. ["transcribe", "vad"] for voice)."""
    peer_classes: list[DeviceClass] | None = None
    """Only offload to peers of these device classes (e.g. ["hub", "laptop"]); default any."""
    deadline_s: float = Field(default=120.0, gt=0, le=3600)
    stall_timeout_s: float = Field(default=3.0, gt=0, le=600)
    """Fail over when the serving peer sends nothing for this long."""
    max_attempts: int = Field(default=4, ge=1, le=32)


class RouterSettings(RoutingPolicy):
    """The policy plus the router's limits against peers that fail, stall or vanish (attacker-facing:
    a member can make itself fail on purpose; these bound what that costs a request)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ban_s: float = Field(default=15.0, gt=0, le=3600)
    """A peer that failed a request is skipped this long (doubling with repeated failures, up to 8x)."""
    max_link_drops: int = Field(default=10, ge=0, le=1000)
    """Drops of this device's own link one request waits out (resuming after each) before giving up."""
