"""Hearth: Home Assistant as a member of a Hearth household (the private AI mesh of the home's devices).

Home Assistant joins like any device, with a setup code, as a member that serves nothing: it reaches the
household's models (chat, translation) through the mesh and shows its devices. This module sets a
config entry up (connect as the member it paired as) and tears it down without leaving a task, socket
or reconnect loop behind (Home Assistant retries a failed setup: each failure cleans up).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent.errors import HearthError, IdentityError, NetworkError, NotAMemberError, StateInUseError
from edge_agent.mesh import CorrectionSync, HouseholdState, MeshMember, NotPairedError
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed, ConfigEntryNotReady
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.typing import ConfigType

from . import compat
from .actions import async_setup_actions
from .const import CONF_BROKER, CONF_HOUSEHOLD, CONF_STATE_DIR, DOMAIN, state_dir
from .runtime import HearthRuntime

_LOGGER = logging.getLogger(__name__)

HearthConfigEntry = ConfigEntry[HearthRuntime]

PLATFORMS: list[Platform] = compat.platforms()


CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Actions are registered once, whatever entries exist (they say so if none is loaded)."""
    async_setup_actions(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: HearthConfigEntry) -> bool:
    """Connect to the household as the member paired in the config flow."""
    home = state_dir(hass, entry.data[CONF_HOUSEHOLD])
    try:
        member, sync = await hass.async_add_executor_job(_member, home, entry.data[CONF_BROKER])
    except (FileNotFoundError, NotPairedError) as exc:
        raise ConfigEntryAuthFailed(
            translation_domain=DOMAIN,
            translation_key="membership_missing",
            translation_placeholders={"path": str(home)},
        ) from exc
    except IdentityError as exc:
        raise ConfigEntryAuthFailed(
            translation_domain=DOMAIN,
            translation_key="membership_unreadable",
            translation_placeholders={"error": str(exc)},
        ) from exc
    except StateInUseError as exc:  # another Home Assistant or `hearth` on this membership: retried
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="state_in_use",
            translation_placeholders={"error": str(exc)},
        ) from exc
    try:
        await member.__aenter__()
    except NotAMemberError as exc:
        raise ConfigEntryAuthFailed(
            translation_domain=DOMAIN,
            translation_key="not_a_member",
            translation_placeholders={"error": str(exc)},
        ) from exc
    except (NetworkError, OSError) as exc:
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="cannot_connect",
            translation_placeholders={"error": str(exc)},
        ) from exc
    except HearthError as exc:
        await member.close()
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="setup_failed",
            translation_placeholders={"error": str(exc)},
        ) from exc
    runtime = HearthRuntime(member, sync)
    entry.runtime_data = runtime
    entry.async_on_unload(member.close)
    entry.async_create_background_task(hass, runtime.watch(hass, entry), f"{DOMAIN} peers {entry.title}")
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


def _member(home: Path, broker: str) -> tuple[MeshMember, CorrectionSync]:
    """This household's member (files: in the executor), keeping the shared corrections too."""
    if not HouseholdState.exists(home):  # never a fresh identity in its place: that is pairing's job
        raise FileNotFoundError(home)
    member = MeshMember(home, broker, corrections=home / "corrections.json")
    assert member.corrections is not None  # asked for above
    return member, member.corrections


async def async_remove_config_entry_device(
    hass: HomeAssistant, entry: HearthConfigEntry, device: dr.DeviceEntry
) -> bool:
    """A user may delete a device that is no longer a household member (it would not come back); a
    member's device reappears with its next presence, so revoke it on the hub instead."""
    runtime = entry.runtime_data
    ids = {i for domain, i in device.identifiers if domain == DOMAIN}
    current = {c.device_id for c in runtime.devices()}
    return not ids & current


async def async_migrate_entry(hass: HomeAssistant, entry: HearthConfigEntry) -> bool:
    """1.1 → 1.2: the entry stored its state directory's absolute path, which broke on a backup restored
    elsewhere; the directory now follows from the household id (moved there if it was elsewhere)."""
    if entry.version > 1:
        _LOGGER.error("This Hearth entry was made by a newer version (%s.%s): downgrade is not supported",
                      entry.version, entry.minor_version)  # fmt: skip
        return False
    if entry.minor_version < 2:
        data = dict(entry.data)
        old = data.pop(CONF_STATE_DIR, None)
        new = state_dir(hass, data[CONF_HOUSEHOLD])
        if old is not None and Path(old) != new:
            await hass.async_add_executor_job(_move, Path(old), new)
        hass.config_entries.async_update_entry(entry, data=data, minor_version=2)
        _LOGGER.info("Migrated Hearth entry %s to version 1.2", entry.title)
    return True


def _move(old: Path, new: Path) -> None:
    if old.is_dir() and not new.exists():
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)


async def async_unload_entry(hass: HomeAssistant, entry: HearthConfigEntry) -> bool:
    """Platforms first; the member's connection closes through async_on_unload."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
