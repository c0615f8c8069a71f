"""N2 in Home Assistant: `hearth.correct_translation` changes what every device of the household answers,
so only an admin may call it (automations and scripts, which run without a user, may); a user who is not
an admin is refused before the household is touched. Whether the household takes the correction is the
household's rule (Home Assistant's certificate must allow correcting), tested with the mesh."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from edge_agent.mesh.corrections import Correction, make_correction
from edge_agent.mesh.identity import DeviceIdentity
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import Unauthorized
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry, MockUser

from custom_components.hearth.const import DOMAIN

FIX = {"text": "Turn off the oven.", "source": "en", "target": "pt", "correction": "Desliga o forno."}


class _Sync:
    """The household's corrections as Home Assistant's member holds them: what was asked of it."""

    def __init__(self) -> None:
        self.made: list[Correction] = []
        self.identity = DeviceIdentity.generate()

    async def correct(self, pair: str, source: str, target: str, model: str = "") -> Correction:
        record = make_correction(self.identity.signing_key, self.identity.device_id, pair, source, target)
        self.made.append(record)
        return record


@pytest.fixture
async def sync(hass: HomeAssistant) -> _Sync:
    assert await async_setup_component(hass, DOMAIN, {})
    held = _Sync()
    entry = MockConfigEntry(domain=DOMAIN, state=ConfigEntryState.LOADED)
    entry.add_to_hass(hass)
    entry.runtime_data = SimpleNamespace(corrections=held)
    return held


async def _call(hass: HomeAssistant, context: Context) -> Any:
    return await hass.services.async_call(DOMAIN, "correct_translation", FIX, blocking=True,
                                          return_response=True, context=context)  # fmt: skip


async def test_a_user_who_is_not_an_admin_may_not_correct_for_the_household(
    hass: HomeAssistant, sync: _Sync, hass_read_only_user: MockUser
) -> None:
    with pytest.raises(Unauthorized) as refused:
        await _call(hass, Context(user_id=hass_read_only_user.id))
    assert refused.value.user_id == hass_read_only_user.id
    assert sync.made == []  # the household was never asked
    await _call(hass, Context())  # the action keeps serving: an automation's call goes through
    assert len(sync.made) == 1


async def test_an_admin_or_an_automation_may(
    hass: HomeAssistant, sync: _Sync, hass_admin_user: MockUser
) -> None:
    for context in (Context(user_id=hass_admin_user.id), Context()):
        response = await _call(hass, context)
        assert response is not None and response["target"] == FIX["correction"]
        assert response["pair"] == "en-pt"
    assert [r.source for r in sync.made] == [FIX["text"], FIX["text"]]


async def test_an_unknown_user_is_refused(hass: HomeAssistant, sync: _Sync) -> None:
    from homeassistant.exceptions import UnknownUser

    with pytest.raises(UnknownUser):
        await _call(hass, Context(user_id="0" * 32))
    assert sync.made == []
