"""MQTT topic layout. Topics are visible to the broker, so they carry ids only, never content.

hearth/<household>/presence/<device>   retained, group-sealed presence; emptied by the last will
hearth/<household>/req/<device>        requests addressed to <device>
hearth/<household>/resp/<device>       responses and stream chunks addressed to <device>
"""

from __future__ import annotations

ROOT = "hearth"


def presence(household: str, device: str) -> str:
    return f"{ROOT}/{household}/presence/{device}"


def requests(household: str, device: str) -> str:
    return f"{ROOT}/{household}/req/{device}"


def responses(household: str, device: str) -> str:
    return f"{ROOT}/{household}/resp/{device}"


def all_presence(household: str) -> str:
    return f"{ROOT}/{household}/presence/+"
