"""One update entity per model pack per household device, from the updates each device announces in its
signed presence: the installed and the newest verified sequence, and progress while it transfers.

Devices update themselves from their peers (signed, chunked, verified). A device whose policy waits
for approval (`[updates] approval = "ask"`) shows its newer sequence here; Install approves it.
"""

from __future__ import annotations

from typing import Any

from edge_agent.errors import HearthError
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import UpdateStatus
from homeassistant.components.update import UpdateEntity, UpdateEntityFeature
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry
from .const import DOMAIN
from .entity import HearthEntity
from .runtime import HearthRuntime, signal_updated

PARALLEL_UPDATES = 0
APPROVAL_ACK_S = 30.0
"""How long Install waits for the device to say it started (its next presence)."""


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Entities for every (device, model) announced now, and for each one announced later."""
    runtime = entry.runtime_data
    known: set[tuple[str, str]] = set()

    @callback
    def add_new() -> None:
        new: list[HearthModelUpdate] = []
        for cert in runtime.devices():
            peer = runtime.peer(cert.device_id)
            for status in peer.presence.updates if peer is not None else []:
                if (cert.device_id, status.name) not in known:
                    known.add((cert.device_id, status.name))
                    new.append(HearthModelUpdate(runtime, entry.entry_id, cert, status.name))
        if new:
            async_add_entities(new)

    add_new()
    entry.async_on_unload(async_dispatcher_connect(hass, signal_updated(entry.entry_id), add_new))


class HearthModelUpdate(HearthEntity, UpdateEntity):
    _attr_entity_category = EntityCategory.CONFIG
    _attr_supported_features = UpdateEntityFeature.INSTALL | UpdateEntityFeature.PROGRESS

    def __init__(self, runtime: HearthRuntime, entry_id: str, cert: DeviceCertificate, model: str) -> None:
        super().__init__(runtime, entry_id, cert, "model_update")
        self.model = model
        self._attr_unique_id = f"{cert.device_id}-update-{model}"
        self._attr_translation_placeholders = {"model": model}
        self._attr_title = model

    def _status(self) -> UpdateStatus | None:
        peer = self.runtime.peer(self.device_id)
        if peer is None:
            return None
        return next((u for u in peer.presence.updates if u.name == self.model), None)

    @property
    def available(self) -> bool:
        return self._status() is not None

    @property
    def installed_version(self) -> str | None:
        status = self._status()
        return str(status.installed) if status is not None else None

    @property
    def latest_version(self) -> str | None:
        status = self._status()
        if status is None:
            return None
        # "current" rows of a device that seeds a pack not meant for it show what it offers, not
        # what it would install: for it, the installed sequence is the latest.
        return str(status.installed if status.state == "current" else max(status.available, status.installed))

    @property
    def in_progress(self) -> bool:
        status = self._status()
        return status is not None and status.state == "fetching"

    @property
    def update_percentage(self) -> float | None:
        status = self._status()
        if status is None or status.state != "fetching":
            return None
        return round(status.progress * 100, 1)

    @property
    def release_summary(self) -> str | None:
        status = self._status()
        if status is None or status.state in ("current", "fetching", "activated"):
            return None
        return f"{status.state}: {status.detail}" if status.detail else status.state

    def version_is_newer(self, latest_version: str, installed_version: str) -> bool:
        """Sequences are integers: "10" is newer than "9"."""
        return int(latest_version) > int(installed_version)

    async def async_install(self, version: str | None, backup: bool, **kwargs: Any) -> None:
        """Approve the sequence the device waits for; it fetches, verifies and activates it itself."""
        status = self._status()
        if status is None or status.state != "awaiting-approval":
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="nothing_to_approve",
                translation_placeholders={"model": self.model, "device": self.device_entry_name},
            )
        member = self.runtime.member
        try:
            await member.approve_update(self.device_id, self.model, status.available)
        except HearthError as exc:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="approval_failed",
                translation_placeholders={"device": self.device_entry_name, "error": str(exc)},
            ) from exc
        sequence = status.available
        if not await member.endpoint.wait_until(lambda: self._acknowledged(sequence), APPROVAL_ACK_S):
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="approval_unanswered",
                translation_placeholders={"device": self.device_entry_name, "seconds": f"{APPROVAL_ACK_S:g}"},
            )

    def _acknowledged(self, sequence: int) -> bool:
        status = self._status()
        return status is not None and (status.state != "awaiting-approval" or status.available > sequence)

    @property
    def device_entry_name(self) -> str:
        cert = self.runtime.member.membership.certs.get(self.device_id)
        return cert.name if cert is not None else self.device_id[:8]
