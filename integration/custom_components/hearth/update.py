"""One update entity per model pack per household device, from the updates each device announces in its
signed presence: the installed and the newest verified sequence, and progress while it transfers.

Devices update themselves from their peers (signed, chunked, verified). A device whose policy waits
for approval (`[updates] approval = "ask"`) shows its newer sequence here; Install approves it, and only
an administrator may (Home Assistant lets every non-admin user call `update.install`).

Which models get an entity is the device's own signed presence, read defensively (N9): a name (checked
against the wire's pattern when the presence was parsed) the device holds, seeds whole, runs (one of its
offers' packs) or has a verified newer sequence of ("awaiting-approval", "fetching"); a name it only
heard of from a peer's unverified offer gets none. At most `MAX_PER_DEVICE` at once and
`MAX_NAMES_PER_DEVICE` distinct names per device while Home Assistant runs (a device rotating names
cannot grow the entity registry); an entity goes when its name leaves the device's adverts, and with the
device when it leaves the household (revoked).
"""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.errors import HearthError
from edge_agent.mesh import DeviceCertificate, Peer, UpdateStatus
from homeassistant.components.update import UpdateEntity, UpdateEntityFeature
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError, Unauthorized, UnknownUser
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry
from .const import DOMAIN
from .entity import HearthEntity
from .runtime import HearthRuntime, signal_updated

_LOGGER = logging.getLogger(__name__)

PARALLEL_UPDATES = 0
APPROVAL_ACK_S = 30.0
"""How long Install waits for the device to say it started (its next presence)."""
MAX_PER_DEVICE = 16
"""Update entities one device has at once (a presence lists at most 16 models)."""
MAX_NAMES_PER_DEVICE = 32
"""Distinct model names one device may bring while Home Assistant runs: each removed entity stays in
the entity registry's memory of deleted entities, so names that come and go must not be unbounded."""
VERIFIED_STATES = frozenset({"awaiting-approval", "fetching"})
"""States a device reports only after verifying the manifest against the household's update keys."""


def shown_models(peer: Peer) -> list[str]:
    """The models of ``peer``'s presence that get an update entity, in the order it lists them."""
    runs = {offer.pack.partition("@")[0] for offer in peer.presence.offers}
    names = [
        status.name
        for status in peer.presence.updates
        if status.installed > 0
        or status.offered > 0
        or status.name in runs
        or status.state in VERIFIED_STATES
    ]
    return list(dict.fromkeys(names))


def _unique_id(device_id: str, model: str) -> str:
    return f"{device_id}-update-{model}"


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Entities follow each device's adverts: added when a model appears, removed when it leaves them
    (or the device leaves the household)."""
    runtime = entry.runtime_data
    registry = er.async_get(hass)
    made: set[str] = set()
    """Unique ids with an entity object in this run."""
    seen: dict[str, set[str]] = {}
    """Names each device brought while Home Assistant runs (bounded by MAX_NAMES_PER_DEVICE)."""
    warned: set[str] = set()

    @callback
    def sync() -> None:
        members = {c.device_id: c for c in runtime.devices()}

        def gone(unique_id: str) -> bool:
            """A live device no longer lists the model, or the device left the household."""
            device_id, _, model = unique_id.partition("-update-")
            peer = runtime.peer(device_id) if device_id in members else None
            return device_id not in members or (peer is not None and model not in shown_models(peer))

        for entity in er.async_entries_for_config_entry(registry, entry.entry_id):
            if entity.domain == "update" and "-update-" in entity.unique_id and gone(entity.unique_id):
                _LOGGER.info("removing %s: its device no longer announces that model", entity.entity_id)
                registry.async_remove(entity.entity_id)  # its entity object leaves with it
                made.discard(entity.unique_id)
        made.difference_update({u for u in made if gone(u)})
        new: list[HearthModelUpdate] = []
        for device_id, cert in members.items():
            peer = runtime.peer(device_id)
            if peer is None:
                continue  # away: its entities stay, unavailable, until it is heard again
            names = seen.setdefault(device_id, set())
            have = sum(1 for u in made if u.startswith(f"{device_id}-update-"))
            for model in shown_models(peer):
                unique_id = _unique_id(device_id, model)
                if unique_id in made:
                    continue
                if have >= MAX_PER_DEVICE or (model not in names and len(names) >= MAX_NAMES_PER_DEVICE):
                    if device_id not in warned:  # once per device and run, not per presence
                        warned.add(device_id)
                        _LOGGER.warning("%s announces more models than Home Assistant shows (at most %d at "
                                        "once, %d while it runs); left out %s", cert.name, MAX_PER_DEVICE,
                                        MAX_NAMES_PER_DEVICE, model)  # fmt: skip
                    continue
                names.add(model)
                made.add(unique_id)
                have += 1
                new.append(HearthModelUpdate(runtime, entry.entry_id, cert, model))
        if new:
            async_add_entities(new)

    sync()
    entry.async_on_unload(async_dispatcher_connect(hass, signal_updated(entry.entry_id), sync))


class HearthModelUpdate(HearthEntity, UpdateEntity):
    _attr_entity_category = EntityCategory.CONFIG
    _attr_supported_features = UpdateEntityFeature.INSTALL | UpdateEntityFeature.PROGRESS

    def __init__(self, runtime: HearthRuntime, entry_id: str, cert: DeviceCertificate, model: str) -> None:
        super().__init__(runtime, entry_id, cert, "model_update")
        self.model = model
        self._attr_unique_id = _unique_id(cert.device_id, model)
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
        """Approve the sequence the device waits for; it fetches, verifies and activates it itself.
        Administrators only (and automations, which only they write)."""
        await self._require_admin()
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

    async def _require_admin(self) -> None:
        """As Home Assistant's own admin services check (`async_register_admin_service`): a call made
        by a user needs an administrator; one made by Home Assistant itself (no user) passes."""
        context = self._context
        if context is None or not context.user_id:
            return
        user = await self.hass.auth.async_get_user(context.user_id)
        if user is None:
            raise UnknownUser(context=context, entity_id=self.entity_id)
        if not user.is_admin:
            raise Unauthorized(context=context, entity_id=self.entity_id)

    def _acknowledged(self, sequence: int) -> bool:
        status = self._status()
        return status is not None and (status.state != "awaiting-approval" or status.available > sequence)

    @property
    def device_entry_name(self) -> str:
        cert = self.runtime.member.membership.certs.get(self.device_id)
        return cert.name if cert is not None else self.device_id[:8]
