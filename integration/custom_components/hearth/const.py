"""Constants of the Hearth integration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from homeassistant.core import HomeAssistant

DOMAIN: Final = "hearth"
CONF_BROKER: Final = "broker"
CONF_CODE: Final = "setup_code"
CONF_NAME: Final = "name"
CONF_HOUSEHOLD: Final = "household_id"
CONF_STATE_DIR: Final = "state_dir"
"""Entries before 1.2 stored their state directory's absolute path (migrated away: see __init__)."""
DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_NAME: Final = "Home Assistant"
PAIR_OPEN_TOPIC: Final = "hearth/pair/open"
"""A hub's open invitation (the mesh's topics.PAIR_OPEN, also the manifest's MQTT matcher)."""
PROFILE: Final = "home-assistant"
"""The profile name in Home Assistant's household certificate (it serves nothing, requests everything)."""
PAIR_TIMEOUT_S: Final = 30.0
STATE_ROOT: Final = "hearth"
"""Under Home Assistant's .storage: one directory per household (identity, certificate, counters)."""


def state_dir(hass: HomeAssistant, household: str) -> Path:
    """Where Home Assistant keeps its membership of ``household`` (moves with the config directory,
    so a restored backup on another machine finds it)."""
    return Path(hass.config.path(".storage", STATE_ROOT, household))
