"""Actions: `hearth.translate` (text → translation, by the household's models, as response data) and
`hearth.correct_translation` (a user's fix, shared with every device of the household).

A correction changes what every device of the household answers for that sentence, so it is an admin's
action, as Home Assistant's own `async_register_admin_service` makes one (a call by a user who is not an
admin raises `Unauthorized`; automations and scripts an admin set up run without a user and may). That
helper cannot return response data in 2025.4, so the same check runs here. The household itself accepts
the correction only if Home Assistant's certificate may correct (`hearth household invite --may-correct`).
"""

from __future__ import annotations

import voluptuous as vol
from edge_agent.client import TranslateRequest
from edge_agent.errors import HearthError
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse, callback
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError, Unauthorized, UnknownUser
from homeassistant.helpers import config_validation as cv

from .const import DOMAIN
from .runtime import HearthRuntime

ATTR_TEXT = "text"
ATTR_SOURCE = "source"
ATTR_TARGET = "target"
ATTR_ENTRY = "config_entry_id"
ATTR_CORRECTION = "correction"
LANGUAGE = vol.All(cv.string, vol.Match(r"^[a-z]{2,3}$"))

TRANSLATE_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_TEXT): vol.All(cv.string, vol.Length(min=1, max=5000)),
        vol.Required(ATTR_SOURCE): LANGUAGE,
        vol.Required(ATTR_TARGET): LANGUAGE,
        vol.Optional(ATTR_ENTRY): cv.string,
    }
)


CORRECT_SCHEMA = TRANSLATE_SCHEMA.extend(
    {vol.Required(ATTR_CORRECTION): vol.All(cv.string, vol.Length(min=1, max=3000))}
)


def _runtime(hass: HomeAssistant, entry_id: str | None) -> HearthRuntime:
    entries = [e for e in hass.config_entries.async_entries(DOMAIN) if e.state is ConfigEntryState.LOADED]
    if entry_id is not None:
        entries = [e for e in entries if e.entry_id == entry_id]
    if not entries:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="no_household")
    runtime: HearthRuntime = entries[0].runtime_data
    return runtime


async def _require_admin(hass: HomeAssistant, call: ServiceCall) -> None:
    """Refuse a call made by a user who is not an admin (`_async_admin_handler`'s rule, HA 2025.4)."""
    user_id = call.context.user_id
    if user_id is None:
        return
    user = await hass.auth.async_get_user(user_id)
    if user is None:
        raise UnknownUser(context=call.context, user_id=user_id)
    if not user.is_admin:
        raise Unauthorized(context=call.context, user_id=user_id)


@callback
def async_setup_actions(hass: HomeAssistant) -> None:
    async def translate(call: ServiceCall) -> ServiceResponse:
        runtime = _runtime(hass, call.data.get(ATTR_ENTRY))
        try:
            request = TranslateRequest(texts=[call.data[ATTR_TEXT]], source=call.data[ATTR_SOURCE],
                                       target=call.data[ATTR_TARGET])  # fmt: skip
        except ValueError as exc:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="bad_translate",
                translation_placeholders={"error": str(exc)},
            ) from exc
        try:
            result, served_by = await runtime.router.translate(request)
        except HearthError as exc:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="household_failed",
                translation_placeholders={"error": str(exc)},
            ) from exc
        return {"translation": result.translations[0], "model": result.model, "served_by": served_by}

    async def correct(call: ServiceCall) -> ServiceResponse:
        await _require_admin(hass, call)
        runtime = _runtime(hass, call.data.get(ATTR_ENTRY))
        pair = f"{call.data[ATTR_SOURCE]}-{call.data[ATTR_TARGET]}"
        try:
            record = await runtime.corrections.correct(pair, call.data[ATTR_TEXT], call.data[ATTR_CORRECTION])
        except HearthError as exc:  # e.g. this member's certificate may not correct
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="correction_refused",
                translation_placeholders={"error": str(exc)},
            ) from exc
        return {"id": record.id, "source": record.source, "target": record.target, "pair": record.pair}

    hass.services.async_register(DOMAIN, "translate", translate, schema=TRANSLATE_SCHEMA,
                                 supports_response=SupportsResponse.ONLY)  # fmt: skip
    hass.services.async_register(DOMAIN, "correct_translation", correct, schema=CORRECT_SCHEMA,
                                 supports_response=SupportsResponse.OPTIONAL)  # fmt: skip
