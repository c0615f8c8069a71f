"""Fix flows of Hearth's repair issues: an expiring membership is fixed by pairing again (reauth)."""

from __future__ import annotations

from homeassistant import data_entry_flow
from homeassistant.components.repairs import ConfirmRepairFlow, RepairsFlow
from homeassistant.core import HomeAssistant


class PairAgainFlow(ConfirmRepairFlow):
    """Confirm, then Home Assistant's reauth flow for the entry asks for a new setup code."""

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id

    async def async_step_confirm(
        self, user_input: dict[str, str] | None = None
    ) -> data_entry_flow.FlowResult:
        if user_input is not None:
            entry = self.hass.config_entries.async_get_entry(self.entry_id)
            if entry is not None:
                entry.async_start_reauth(self.hass)
        return await super().async_step_confirm(user_input)


async def async_create_fix_flow(
    hass: HomeAssistant, issue_id: str, data: dict[str, str | int | float | None] | None
) -> RepairsFlow:
    entry_id = str((data or {}).get("entry_id", ""))
    return PairAgainFlow(entry_id)
