"""Constants of the Hearth integration."""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "hearth"
CONF_BROKER: Final = "broker"
CONF_CODE: Final = "setup_code"
CONF_NAME: Final = "name"
CONF_HOUSEHOLD: Final = "household_id"
CONF_STATE_DIR: Final = "state_dir"
DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_NAME: Final = "Home Assistant"
PROFILE: Final = "home-assistant"
"""The profile name in Home Assistant's household certificate (it serves nothing, requests everything)."""
PAIR_TIMEOUT_S: Final = 30.0
STATE_ROOT: Final = "hearth"
"""Under Home Assistant's .storage: one directory per household (identity, certificate, counters)."""
