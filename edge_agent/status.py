"""The device status snapshot: this device's own load, read fresh, in one place for every report of it
(the mesh presence advert, Home Assistant discovery's state)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.mesh.endpoint import MeshEndpoint
from edge_agent.mesh.protocol import Offer
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.router import Router
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager

__all__ = ["DeviceStatus", "device_status"]


@dataclass(frozen=True)
class DeviceStatus:
    queue_depth: int
    """Requests running here: served for peers and this device's own."""
    free_model_ram_mb: int
    served: int
    """Requests answered in full for peers (0 off the mesh)."""
    offloaded: int
    """This device's requests a peer answered."""
    speed: dict[str, float]
    """Measured rate of each task benchmarked here, in the task's unit."""
    connected: bool
    """Whether the mesh link is up (False off the mesh)."""


def device_status(
    profile: FirmwareProfile,
    models: ModelManager | None,
    router: Router,
    endpoint: MeshEndpoint | None = None,
    offers: Mapping[Task, Offer] | None = None,
) -> DeviceStatus:
    """``models``: the engines this process runs (None: none); ``endpoint``: on the mesh."""
    used = models.used_mb if models is not None else 0.0
    return DeviceStatus(
        queue_depth=router.local_in_flight + (endpoint.queue_depth if endpoint is not None else 0),
        free_model_ram_mb=max(0, int(profile.model_ram_budget_mb - used)),
        served=endpoint.served if endpoint is not None else 0,
        offloaded=router.offloaded if endpoint is not None else 0,
        speed={task: round(offer.rate, 2) for task, offer in (offers or {}).items()},
        connected=endpoint is not None and endpoint.connected.is_set(),
    )
