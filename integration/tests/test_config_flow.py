"""Joining a household from Home Assistant's config flow, against a real Mosquitto and a real hub
(`hearth household invite` in the agent's venv): every error the user can meet, a successful pairing
that sets up and unloads without leaks, one entry per household, and a broker that is down at setup."""

from __future__ import annotations

from pathlib import Path

import pytest
from homeassistant import config_entries
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from pytest_homeassistant_custom_component.common import start_reauth_flow

from custom_components.hearth import config_flow
from custom_components.hearth.const import CONF_BROKER, CONF_CODE, CONF_HOUSEHOLD, CONF_NAME, DOMAIN

from .conftest import Hub, _stop


async def _start(hass: HomeAssistant) -> str:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "user"
    return str(result["flow_id"])


async def _submit(hass: HomeAssistant, flow_id: str, broker: str, code: str) -> dict:  # type: ignore[type-arg]
    return await hass.config_entries.flow.async_configure(  # type: ignore[return-value]
        flow_id, {CONF_BROKER: broker, CONF_CODE: code, CONF_NAME: "Home Assistant"}
    )


async def test_bad_input_is_refused_before_any_network(hass: HomeAssistant) -> None:
    flow = await _start(hass)
    result = await _submit(hass, flow, "http://hub.lan", "4827-1930")
    assert result["errors"] == {CONF_BROKER: "invalid_broker"}
    result = await _submit(hass, flow, "mqtt://127.0.0.1:1", "48271")
    assert result["errors"] == {CONF_CODE: "invalid_code"}


async def test_an_unreachable_broker_and_a_missing_invitation_say_so(
    hass: HomeAssistant, mosquitto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = await _start(hass)
    result = await _submit(hass, flow, "mqtt://127.0.0.1:9", "4827-1930")
    assert result["errors"] == {"base": "cannot_connect"}
    monkeypatch.setattr(config_flow, "PAIR_TIMEOUT_S", 1.0)  # nobody invites: do not wait 30 s
    result = await _submit(hass, flow, mosquitto, "4827-1930")
    assert result["errors"] == {"base": "no_invitation"}
    assert not list(Path(hass.config.path(".storage", "hearth")).glob("pairing-*"))  # nothing left behind


async def test_a_wrong_code_is_refused_by_the_hub(hass: HomeAssistant, hub: Hub) -> None:
    invite, code = hub.invite()
    try:
        wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
        flow = await _start(hass)
        result = await _submit(hass, flow, hub.broker, wrong)
        assert result["errors"] == {CONF_CODE: "wrong_code"}, result["description_placeholders"]
    finally:
        _stop(invite)


async def test_pairing_sets_up_unloads_cleanly_and_allows_one_entry_per_household(
    hass: HomeAssistant, hub: Hub
) -> None:
    invite, code = hub.invite()
    try:
        flow = await _start(hass)
        result = await _submit(hass, flow, hub.broker, code)
    finally:
        _stop(invite)
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    household = result["data"][CONF_HOUSEHOLD]
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    assert entry.unique_id == household and entry.title == f"Household {household}"
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    member = entry.runtime_data.member
    assert member.certificate.profile == "home-assistant" and member.certificate.serves == []
    shown = hub.hearth("household", "show")
    assert "Home Assistant" in shown.stdout and "home-assistant" in shown.stdout

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    assert member.endpoint.state.value == "closed"

    # The same household again: refused, one entry per household.
    invite, code = hub.invite()
    try:
        flow = await _start(hass)
        again = await _submit(hass, flow, hub.broker, code)
    finally:
        _stop(invite)
    assert again["type"] is FlowResultType.ABORT and again["reason"] == "already_configured"


async def test_a_broker_down_at_setup_means_retry_with_nothing_left_running(
    hass: HomeAssistant, hub: Hub
) -> None:
    invite, code = hub.invite()
    try:
        flow = await _start(hass)
        result = await _submit(hass, flow, hub.broker, code)
    finally:
        _stop(invite)
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(entry.entry_id)
    hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_BROKER: "mqtt://127.0.0.1:9"})
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_RETRY
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def _paired_entry(hass: HomeAssistant, hub: Hub, *options: str):  # type: ignore[no-untyped-def]
    invite, code = hub.invite("hub", *options)
    try:
        result = await _submit(hass, await _start(hass), hub.broker, code)
    finally:
        _stop(invite)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    return hass.config_entries.async_entries(DOMAIN)[0]


async def test_reauth_pairs_again_with_the_same_household_only(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    from .conftest import make_hub

    entry = await _paired_entry(hass, hub)
    before = entry.runtime_data.member.certificate.device_id
    # Another household's hub answers: refused, and nothing of it is kept.
    other = make_hub(tmp_path / "other", hub.broker)
    flow = await start_reauth_flow(hass, entry)
    assert flow["step_id"] == "reauth_confirm"
    invite, code = other.invite()
    try:
        result = await _submit(hass, flow["flow_id"], hub.broker, code)
    finally:
        _stop(invite)
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "wrong_household"
    assert sorted(p.name for p in Path(hass.config.path(".storage", "hearth")).iterdir()) == [entry.unique_id]
    # Its own hub: paired again (a new identity), reloaded.
    flow = await start_reauth_flow(hass, entry)
    invite, code = hub.invite()
    try:
        result = await _submit(hass, flow["flow_id"], hub.broker, code)
    finally:
        _stop(invite)
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reauth_successful"
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert entry.runtime_data.member.certificate.device_id != before


async def test_reconfigure_checks_the_new_broker_address_by_connecting(hass: HomeAssistant, hub: Hub) -> None:
    entry = await _paired_entry(hass, hub)
    flow = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_RECONFIGURE, "entry_id": entry.entry_id}
    )
    result = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {CONF_BROKER: "mqtt://127.0.0.1:9"}
    )
    assert result["errors"] == {"base": "cannot_connect"}
    same = hub.broker.replace("127.0.0.1", "localhost")
    result = await hass.config_entries.flow.async_configure(flow["flow_id"], {CONF_BROKER: same})
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reconfigure_successful"
    await hass.async_block_till_done()
    assert entry.data[CONF_BROKER] == same and entry.state is ConfigEntryState.LOADED


def test_pairing_over_mqtts_is_encrypted_tls_1_3_authenticated_by_the_code() -> None:
    """The pairing connection is TLS 1.3 without certificate checks: SPAKE2 and the code authenticate
    the hub end to end, and a new device has no CA to check the broker with yet."""
    import ssl

    assert config_flow._pairing_tls("mqtt://hub.lan:1883") is None
    ctx = config_flow._pairing_tls("mqtts://hub.lan:8884")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3 and ctx.verify_mode is ssl.CERT_NONE


async def test_reconfigure_refuses_a_url_that_is_not_a_broker(hass: HomeAssistant, hub: Hub) -> None:
    entry = await _paired_entry(hass, hub)
    flow = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_RECONFIGURE, "entry_id": entry.entry_id}
    )
    result = await hass.config_entries.flow.async_configure(flow["flow_id"], {CONF_BROKER: "http://hub.lan"})
    assert result["errors"] == {CONF_BROKER: "invalid_broker"}
    assert entry.data[CONF_BROKER] == hub.broker


def test_the_invitation_topic_is_the_mesh_s_and_the_manifest_s() -> None:
    """The component names a hub's open invitation itself (it imports only the mesh's public surface)."""
    import json

    from edge_agent.mesh import topics

    from custom_components.hearth.const import PAIR_OPEN_TOPIC

    manifest = json.loads((Path(config_flow.__file__).parent / "manifest.json").read_text())
    assert PAIR_OPEN_TOPIC == topics.PAIR_OPEN
    assert PAIR_OPEN_TOPIC in manifest["mqtt"]
