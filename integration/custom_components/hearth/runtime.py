"""What one config entry holds while it runs: the household member Home Assistant is, and a watcher
that turns the mesh's peer changes into one dispatcher signal for the entities."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from edge_agent.config import RoutingSection
from edge_agent.mesh.features.corrections import CorrectionSync
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.peers import Peer
from edge_agent.models.selection import Plan
from edge_agent.router import Router
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.dispatcher import async_dispatcher_send

from .const import DOMAIN, PROFILE

_LOGGER = logging.getLogger(__name__)


def signal_updated(entry_id: str) -> str:
    return f"{DOMAIN}_{entry_id}_updated"


@dataclass
class HearthRuntime:
    member: MeshMember
    corrections: CorrectionSync
    revoked_seen: frozenset[str] = field(default_factory=frozenset)
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        # Home Assistant runs no models: every task is offload-only, the router picks among the peers
        # (expected time from their offers and measured speed) and fails over mid-answer.
        self.router = Router(plan=Plan(PROFILE, 0), policy=RoutingSection(), endpoint=self.member.endpoint,
                             local_name="Home Assistant")  # fmt: skip

    def devices(self) -> list[DeviceCertificate]:
        """The household's other members that may be shown (not revoked, not Home Assistant itself)."""
        own = self.member.certificate.device_id
        membership = self.member.membership
        return [c for d, c in membership.certs.items() if d != own and d not in membership.revoked]

    def peer(self, device_id: str) -> Peer | None:
        peer = self.member.endpoint.peers.get(device_id)
        return peer if peer is not None and peer.alive(time.monotonic()) else None

    async def watch(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        """Until unload: every peer change (presence, departure, expiry, revocation) -> one signal;
        revoked devices leave the device registry (no ghost devices)."""
        endpoint = self.member.endpoint
        while True:
            with contextlib.suppress(TimeoutError):
                await endpoint.wait_peers_changed(30.0)
            self._remove_revoked(hass, entry)
            async_dispatcher_send(hass, signal_updated(entry.entry_id))

    @callback
    def _remove_revoked(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        revoked = self.member.membership.revoked
        if revoked == self.revoked_seen:
            return
        registry = dr.async_get(hass)
        for device_id in revoked - self.revoked_seen:
            device = registry.async_get_device(identifiers={(DOMAIN, device_id)})
            if device is not None:
                _LOGGER.info("removing revoked household device %s", device.name)
                registry.async_update_device(device.id, remove_config_entry_id=entry.entry_id)
        self.revoked_seen = revoked
