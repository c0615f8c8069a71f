"""The entry over time: a 1.1 entry is migrated; the broker going away makes every entity unavailable
with one log line, and they recover by themselves when it is back; repair issues for a membership that
expires soon (fixed by pairing again) and for a device that refused an update that did not verify."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.mesh.state import HouseholdState
from homeassistant.config_entries import SOURCE_REAUTH, ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.hearth.const import DOMAIN

from .conftest import Broker, Hub, add_member
from .test_config_flow import _paired_entry
from .test_devices import FAST, state_of, until


def _household(hub: Hub) -> str:
    return HouseholdState(hub.home / "state").load().certificate.household_id


async def _entry_at(hass: HomeAssistant, hub: Hub, home: Path, *, valid_days: int = 365) -> MockConfigEntry:
    """A 1.1 entry (absolute state path) for a Home Assistant membership made at ``home``."""
    await hass.async_add_executor_job(
        lambda: add_member(hub, home, "Home Assistant", serves=[], device_class="hub", valid_days=valid_days)
    )
    household = await hass.async_add_executor_job(_household, hub)
    entry = MockConfigEntry(
        domain=DOMAIN, unique_id=household, title=f"Household {household}", version=1, minor_version=1,
        data={"broker": hub.broker, "household_id": household, "state_dir": str(home)},
    )  # fmt: skip
    entry.add_to_hass(hass)
    return entry


async def test_a_1_1_entry_is_migrated_and_its_membership_moves_with_it(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "elsewhere")
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert (entry.version, entry.minor_version) == (1, 2)
    assert "state_dir" not in entry.data
    moved = Path(hass.config.path(".storage", "hearth", entry.unique_id))
    assert (moved / "household.json").is_file() or any(moved.iterdir())
    assert not (tmp_path / "elsewhere").exists()


async def test_an_entry_from_a_newer_version_is_not_set_up(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    hass.config_entries.async_update_entry(entry, version=2)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.MIGRATION_ERROR


async def test_the_broker_going_away_makes_entities_unavailable_with_one_log_line_and_they_recover(
    hass: HomeAssistant, hub: Hub, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    entry = await _paired_entry(hass, hub)
    hub_member = await hass.async_add_executor_job(
        lambda: MeshMember(hub.home / "state", hub.broker, settings=FAST)
    )
    hub_id = hub_member.certificate.device_id
    async with hub_member:
        await until(hass, entry, lambda: state_of(hass, hub_id, "connectivity") == "on")
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        await hass.async_add_executor_job(broker.stop)
        await until(hass, entry, lambda: state_of(hass, hub_id, "connectivity") == STATE_UNAVAILABLE)
        assert state_of(hass, hub_id, "queue_depth") == STATE_UNAVAILABLE
        await hass.async_add_executor_job(broker.start)  # same port: both members reconnect by themselves
        await until(hass, entry, lambda: state_of(hass, hub_id, "connectivity") == "on", timeout=60)
        assert state_of(hass, hub_id, "queue_depth") == "0"
    ours = [r for r in caplog.records if r.name.startswith("custom_components.hearth")]
    assert [(r.levelno, "unreachable" in r.getMessage()) for r in ours if "broker" in r.getMessage()] == [
        (logging.WARNING, True),
        (logging.INFO, False),
    ]
    assert entry.state is ConfigEntryState.LOADED


async def test_a_membership_expiring_soon_raises_a_repair_that_starts_pairing_again(
    hass: HomeAssistant, hub: Hub, tmp_path: Path, hass_client: object
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha", valid_days=10)
    assert await async_setup_component(hass, "repairs", {})
    assert await hass.config_entries.async_setup(entry.entry_id)
    issue_id = f"membership_expiring_{entry.entry_id}"
    await until(hass, entry, lambda: ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None)
    issue = ir.async_get(hass).async_get_issue(DOMAIN, issue_id)
    assert issue is not None and issue.is_fixable and issue.translation_key == "membership_expiring"
    client = await hass_client()  # type: ignore[operator]
    flow = await (
        await client.post("/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id})
    ).json()
    assert flow["step_id"] == "confirm"
    done = await (await client.post(f"/api/repairs/issues/fix/{flow['flow_id']}", json={})).json()
    assert done["type"] == "create_entry"
    await hass.async_block_till_done()
    reauth = [f for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
              if f["context"]["source"] == SOURCE_REAUTH]  # fmt: skip
    assert len(reauth) == 1 and reauth[0]["step_id"] == "reauth_confirm"


async def test_a_device_refusing_an_update_raises_a_repair_until_it_reports_a_good_state(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _paired_entry(hass, hub)
    home = await hass.async_add_executor_job(
        lambda: add_member(
            hub, tmp_path / "fridge", "fridge-panel", serves=["translate"], device_class="appliance"
        )
    )
    reported: list[UpdateStatus] = [
        UpdateStatus(
            name="bergamot-tiny11-en-pt",
            installed=1,
            available=1,
            state="refused",
            detail="UpdateSignatureError: a signature does not verify",
        )
    ]

    fridge = await hass.async_add_executor_job(  # reports what the fridge's updater would report
        lambda: MeshMember(home, hub.broker, settings=FAST, update_status=lambda: list(reported))
    )
    fridge_id = fridge.certificate.device_id
    issue_id = f"update_refused_{fridge_id}_bergamot-tiny11-en-pt"
    async with fridge:
        await until(hass, entry, lambda: ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None)
        issue = ir.async_get(hass).async_get_issue(DOMAIN, issue_id)
        assert issue is not None and issue.severity is ir.IssueSeverity.ERROR
        assert issue.translation_placeholders == {
            "device": "fridge-panel", "model": "bergamot-tiny11-en-pt",
            "reason": "UpdateSignatureError: a signature does not verify",
        }  # fmt: skip
        reported[0] = reported[0].model_copy(update={"state": "current", "detail": ""})
        await fridge.endpoint.publish_presence()
        await until(hass, entry, lambda: ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None)


async def test_home_assistant_revoked_by_the_hub_is_asked_to_pair_again(
    hass: HomeAssistant, hub: Hub
) -> None:
    """The hub revokes Home Assistant; the revocation list reaches it in the hub's signed presence: the
    entry asks to pair again (reauth) instead of carrying on as if it were still a member."""
    entry = await _paired_entry(hass, hub)
    own = entry.runtime_data.member.certificate.device_id
    hub_member = await hass.async_add_executor_job(
        lambda: MeshMember(hub.home / "state", hub.broker, settings=FAST)
    )
    async with hub_member:
        await until(
            hass, entry, lambda: state_of(hass, hub_member.certificate.device_id, "connectivity") == "on"
        )
        crl = await hass.async_add_executor_job(lambda: HouseholdState(hub.home / "state").revoke([own]))
        hub_member.membership.apply_revocations(crl)
        raised = asyncio.Event()  # a reauth flow raises Home Assistant's "reauthenticate" repair issue
        issue = f"config_entry_reauth_{DOMAIN}_{entry.entry_id}"

        @callback
        def updated(event: Event[Any]) -> None:
            if event.data["issue_id"] == issue:
                raised.set()

        unsubscribe = hass.bus.async_listen(ir.EVENT_REPAIRS_ISSUE_REGISTRY_UPDATED, updated)
        try:
            await hub_member.endpoint.publish_presence()
            async with asyncio.timeout(15):
                await raised.wait()
        finally:
            unsubscribe()
        flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        assert [f["context"]["source"] for f in flows] == [SOURCE_REAUTH]
    assert own in entry.runtime_data.member.membership.revoked
