"""What one config entry holds while it runs: the household member Home Assistant is, and a watcher
that turns the mesh's peer changes into one dispatcher signal for the entities."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edge_agent.client import Router, member_router
from edge_agent.errors import HearthError
from edge_agent.mesh import CorrectionSync, DeviceCertificate, MeshMember, Peer
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_send

from .const import DOMAIN

_LOGGER = logging.getLogger(__name__)


EXPIRY_WARNING = timedelta(days=30)
"""A repair issue asks to pair again this long before Home Assistant's membership expires."""


def signal_updated(entry_id: str) -> str:
    return f"{DOMAIN}_{entry_id}_updated"


@dataclass
class HearthRuntime:
    member: MeshMember
    corrections: CorrectionSync
    revoked_seen: frozenset[str] = field(default_factory=frozenset)
    reachable: bool = True
    """The broker connection as last logged (one line when it drops, one when it is back)."""
    refusals: set[str] = field(default_factory=set)
    """Open repair issues about devices' refused updates (issue ids)."""
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        # Home Assistant runs no models: every task is offload-only, the router picks among the peers
        # (expected time from their offers and measured speed) and fails over mid-answer.
        self.router = member_router(self.member.endpoint, name="Home Assistant")

    def devices(self) -> list[DeviceCertificate]:
        """The household's other members that may be shown (not revoked, not Home Assistant itself)."""
        own = self.member.certificate.device_id
        membership = self.member.membership
        return [c for d, c in membership.certs.items() if d != own and d not in membership.revoked]

    @property
    def connected(self) -> bool:
        return self.member.endpoint.connected.is_set()

    def peer(self, device_id: str) -> Peer | None:
        """The device's live presence, if Home Assistant is on the mesh and heard it lately."""
        peer = self.member.endpoint.peers.get(device_id)
        return peer if peer is not None and self.connected and peer.alive(time.monotonic()) else None

    async def watch(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        """Until unload: every peer change (presence, departure, expiry, revocation) -> one signal;
        revoked devices leave the device registry (no ghost devices)."""
        endpoint = self.member.endpoint
        while True:
            if self._lost_membership(hass, entry):
                return
            self._log_reachability(entry)
            self._remove_revoked(hass, entry)
            self._raise_repairs(hass, entry)
            async_dispatcher_send(hass, signal_updated(entry.entry_id))
            await endpoint.wait_changed(30.0)

    @callback
    def _lost_membership(self, hass: HomeAssistant, entry: ConfigEntry) -> bool:
        """Home Assistant's own certificate was revoked (the hub's new CRL reached it) or expired: the
        household ignores it from now on, so ask the user to pair again (reauth) and stop watching."""
        try:
            self.member.check_member()
        except HearthError as exc:
            _LOGGER.warning("Home Assistant is no longer a member of the household: %s; pair again", exc)
            entry.async_start_reauth(hass)
            return True
        return False

    def _log_reachability(self, entry: ConfigEntry) -> None:
        if self.connected == self.reachable:
            return
        self.reachable = self.connected
        if self.reachable:
            _LOGGER.info("The Hearth household's broker %s is reachable again", self.member.broker)
        else:
            _LOGGER.warning("The Hearth household's broker %s is unreachable; its entities are unavailable "
                            "until it is back (reconnecting)", self.member.broker)  # fmt: skip

    @callback
    def _raise_repairs(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        """Repair issues: Home Assistant's membership expires soon (pair again); a device refused an
        update that did not verify (someone may be tampering), until it reports a good state again."""
        expires = self.member.certificate.expires_at
        issue = f"membership_expiring_{entry.entry_id}"
        if expires - datetime.now(UTC) < EXPIRY_WARNING:
            ir.async_create_issue(
                hass, DOMAIN, issue, is_fixable=True, severity=ir.IssueSeverity.WARNING,
                translation_key="membership_expiring", data={"entry_id": entry.entry_id},
                translation_placeholders={"expires": expires.date().isoformat()},
            )  # fmt: skip
        else:
            ir.async_delete_issue(hass, DOMAIN, issue)
        refused: set[str] = set()
        heard: set[str] = set()
        for cert in self.devices():
            peer = self.peer(cert.device_id)
            if peer is None:
                continue
            heard.add(cert.device_id)
            for status in peer.presence.updates:
                if status.state not in ("refused", "unverifiable"):
                    continue
                issue = f"update_refused_{cert.device_id}_{status.name}"
                refused.add(issue)
                if issue not in self.refusals:
                    _LOGGER.warning("%s refused an update of %s: %s", cert.name, status.name, status.detail)
                ir.async_create_issue(
                    hass, DOMAIN, issue, is_fixable=False, severity=ir.IssueSeverity.ERROR,
                    translation_key="update_refused",
                    translation_placeholders={"device": cert.name, "model": status.name,
                                              "reason": status.detail or status.state},
                )  # fmt: skip
        # An issue stays while its device is away; it goes once the device reports a good state.
        for issue in self.refusals - refused:
            if issue.split("_")[2] in heard or issue.split("_")[2] in self.member.membership.revoked:
                ir.async_delete_issue(hass, DOMAIN, issue)
            else:
                refused.add(issue)
        self.refusals = refused

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
