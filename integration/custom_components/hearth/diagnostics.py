"""Diagnostics: the membership and the mesh as this entry sees them, with anything that could identify
or impersonate the household redacted (keys, signatures, the state directory)."""

from __future__ import annotations

import time
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from . import HearthConfigEntry
from .const import CONF_STATE_DIR

TO_REDACT = {CONF_STATE_DIR, "sign_key", "box_key", "signature", "tls_sha256", "hosts", "session"}


async def async_get_config_entry_diagnostics(hass: HomeAssistant, entry: HearthConfigEntry) -> dict[str, Any]:
    runtime = entry.runtime_data
    member = runtime.member
    now = time.monotonic()
    peers = [
        {
            "presence": peer.presence.model_dump(mode="json", exclude={"certificate", "crl"}),
            "certificate": peer.certificate.model_dump(mode="json"),
            "alive": peer.alive(now),
            "rtt_ms": peer.rtt_ms,
        }
        for peer in member.peers()
    ]
    data = {
        "entry": dict(entry.data),
        "certificate": member.certificate.model_dump(mode="json"),
        "revocation_list_version": member.membership.crl_version,
        "members_known": len(member.membership.certs),
        "peers": peers,
        "dropped": dict(member.endpoint.dropped),
        "state": member.status.value,
    }
    return async_redact_data(data, TO_REDACT)
