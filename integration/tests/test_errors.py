"""What the user meets when things are wrong, each a translated error, nothing left half set up: a
membership that is missing, unreadable or expired (pair again); actions and chat with no device to
answer; Install on an update that needs no approval, on another version, or unanswered."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.protocol import UpdateStatus
from homeassistant.components import conversation
from homeassistant.config_entries import SOURCE_REAUTH, ConfigEntryState
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.hearth import update as update_platform
from custom_components.hearth.const import DOMAIN

from .conftest import Hub, add_member
from .test_devices import FAST, until
from .test_lifecycle import _entry_at, _household

MODEL = "bergamot-tiny11-en-pt"


def _reauth_started(hass: HomeAssistant) -> bool:
    return any(
        f["context"]["source"] == SOURCE_REAUTH
        for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    )


@pytest.mark.parametrize("directory", ["absent", "empty"])
async def test_a_missing_membership_asks_to_pair_again(hass: HomeAssistant, hub: Hub, directory: str) -> None:
    household = await hass.async_add_executor_job(_household, hub)
    home = Path(hass.config.path(".storage", "hearth", household))
    if directory == "empty":
        home.mkdir(parents=True)
    entry = MockConfigEntry(domain=DOMAIN, unique_id=household, version=1, minor_version=2,
                            data={"broker": hub.broker, "household_id": household})  # fmt: skip
    entry.add_to_hass(hass)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert _reauth_started(hass)
    assert (home.is_dir(), list(home.iterdir()) if home.is_dir() else []) == (directory == "empty", [])


async def test_an_unreadable_membership_asks_to_pair_again(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    for path in (tmp_path / "ha").glob("*.json"):
        path.write_text("{not json")
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.reason is not None and "cannot be read" in entry.reason
    assert _reauth_started(hass)


async def test_an_expired_membership_asks_to_pair_again(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha", valid_days=0)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.reason is not None and "no longer a member" in entry.reason
    assert _reauth_started(hass)


async def test_actions_and_chat_with_no_device_to_answer_say_so(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    with pytest.raises(HomeAssistantError) as failed:
        await hass.services.async_call(DOMAIN, "translate", {"text": "Hello.", "source": "en", "target": "pt",
                                                             "config_entry_id": entry.entry_id},
                                       blocking=True, return_response=True)  # fmt: skip
    assert failed.value.translation_key == "household_failed"
    entity_id = er.async_get(hass).async_get_entity_id(
        "conversation", DOMAIN, f"{entry.entry_id}-conversation"
    )
    result = await conversation.async_converse(hass, "Hello?", None, Context(), agent_id=entity_id)
    assert result.response.response_type.value == "error"
    assert "could not answer" in result.response.speech["plain"]["speech"]


async def test_install_refuses_what_it_cannot_approve_and_says_when_unanswered(
    hass: HomeAssistant, hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fridge (a real member, reporting update states in its signed presence) that refused an update:
    Install says there is nothing to approve. Awaiting approval: a specific version is not offered; the
    approval is sent, but this fridge runs no updater, so Install says it did not start."""
    monkeypatch.setattr(update_platform, "APPROVAL_ACK_S", 1.0)
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    assert await hass.config_entries.async_setup(entry.entry_id)
    home = await hass.async_add_executor_job(
        lambda: add_member(
            hub, tmp_path / "fridge", "fridge-panel", serves=["translate"], device_class="appliance"
        )
    )
    reported = [UpdateStatus(name=MODEL, installed=1, available=2, state="refused", detail="bad signature")]
    fridge = await hass.async_add_executor_job(
        lambda: MeshMember(home, hub.broker, settings=FAST, update_status=lambda: list(reported))
    )
    registry = er.async_get(hass)
    unique_id = f"{fridge.certificate.device_id}-update-{MODEL}"
    async with fridge:
        await until(
            hass, entry, lambda: registry.async_get_entity_id("update", DOMAIN, unique_id) is not None
        )
        entity_id = registry.async_get_entity_id("update", DOMAIN, unique_id)
        await until(hass, entry, lambda: (s := hass.states.get(entity_id)) is not None and s.state == "on")
        assert hass.states.get(entity_id).attributes["release_summary"] == "refused: bad signature"
        install = {"entity_id": entity_id}
        with pytest.raises(HomeAssistantError) as refused:
            await hass.services.async_call("update", "install", install, blocking=True)
        assert refused.value.translation_key == "nothing_to_approve"

        reported[0] = UpdateStatus(name=MODEL, installed=1, available=2, state="awaiting-approval")
        await fridge.endpoint.publish_presence()
        await until(
            hass,
            entry,
            lambda: hass.states.get(entity_id).attributes["release_summary"] == "awaiting-approval",
        )
        with pytest.raises(HomeAssistantError) as other:
            await hass.services.async_call("update", "install", install | {"version": "3"}, blocking=True)
        assert "specific version is not supported" in str(other.value)  # Home Assistant's own check
        with pytest.raises(HomeAssistantError) as unanswered:
            await hass.services.async_call("update", "install", install, blocking=True)
        assert unanswered.value.translation_key == "approval_unanswered"
