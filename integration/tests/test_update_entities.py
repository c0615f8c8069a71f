"""Update entities are a device's signed presence read defensively (issue 21): N9 — only models the
device holds, seeds, runs or has verified a newer sequence of; at most 16 at once and 32 names per device
while Home Assistant runs; removed when the name leaves the device's adverts or the device leaves. S1 —
Home Assistant 2025.4.4 lets any user call `update.install` (its `USER_POLICY` grants every entity), so
Install itself requires an administrator. Real Mosquitto; the fridge is a real mesh member whose
presence announces what the test sets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.mesh.state import HouseholdState
from homeassistant.auth.models import User
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import Unauthorized
from homeassistant.helpers import entity_registry as er

from custom_components.hearth import update
from custom_components.hearth.const import DOMAIN

from .conftest import Hub, add_member
from .test_devices import FAST, state_of, until
from .test_lifecycle import _entry_at

MODEL = "bergamot-tiny11-en-pt"


def status(name: str, **fields: object) -> UpdateStatus:
    values: dict[str, object] = {"installed": 1, "available": 1, "state": "current"} | fields
    return UpdateStatus.model_validate({"name": name, **values})


class Fridge:
    """A household appliance that announces whatever update rows the test gives it."""

    def __init__(self, home: Path, broker: str) -> None:
        self.rows: list[UpdateStatus] = []
        self.member = MeshMember(home, broker, settings=FAST, update_status=self.report)

    def report(self) -> list[UpdateStatus]:
        return list(self.rows)

    @property
    def id(self) -> str:
        return self.member.certificate.device_id


async def _setup(hass: HomeAssistant, hub: Hub, tmp_path: Path):  # type: ignore[no-untyped-def]
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()

    def fridge() -> Fridge:
        home = add_member(
            hub, tmp_path / "fridge", "fridge-panel", serves=["translate"], device_class="appliance"
        )
        return Fridge(home, hub.broker)

    return entry, await hass.async_add_executor_job(fridge)


def update_ids(hass: HomeAssistant, entry_id: str, device_id: str) -> list[str]:
    registry = er.async_get(hass)
    return sorted(
        e.unique_id.partition("-update-")[2]
        for e in er.async_entries_for_config_entry(registry, entry_id)
        if e.domain == "update" and e.unique_id.startswith(f"{device_id}-update-")
    )


def entity_id(hass: HomeAssistant, device_id: str, model: str) -> str | None:
    return er.async_get(hass).async_get_entity_id("update", DOMAIN, f"{device_id}-update-{model}")


async def test_only_models_the_device_holds_get_entities_and_they_follow_its_adverts(
    hass: HomeAssistant, hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry, fridge = await _setup(hass, hub, tmp_path)
    fridge.rows = [
        status(MODEL),  # installed here
        status("whisper-tiny-en", installed=0, available=3, state="awaiting-approval"),  # verified, waits
        status("evil-model", installed=0, available=9, state="unverifiable", detail="a peer's unsigned pack"),
        status("other-thing", installed=0, available=4, state="refused", detail="not signed"),
    ]
    async with fridge.member:
        await until(
            hass, entry, lambda: update_ids(hass, entry.entry_id, fridge.id) == [MODEL, "whisper-tiny-en"]
        )
        # Names it only heard of from a peer's unverified offer get nothing.
        assert (
            entity_id(hass, fridge.id, "evil-model") is None
            and entity_id(hass, fridge.id, "other-thing") is None
        )

        # A device rotating names (each presence 16 new "installed" ones): at most 16 at once, the old
        # ones removed, and at most 32 names while Home Assistant runs; the rest is left out (one line).
        caplog.set_level(logging.WARNING, "custom_components.hearth.update")
        first = [status(f"fake-{i:02d}") for i in range(16)]
        fridge.rows = first
        await until(
            hass, entry, lambda: update_ids(hass, entry.entry_id, fridge.id) == [r.name for r in first]
        )
        second = [status(f"fake-{i:02d}") for i in range(16, 32)]
        fridge.rows = second
        budget = update.MAX_NAMES_PER_DEVICE - 2 - 16  # of 32 names, the 2 real ones and the first 16 went
        shown = [r.name for r in second][:budget]
        await until(hass, entry, lambda: update_ids(hass, entry.entry_id, fridge.id) == shown)
        fridge.rows = [status(f"fake-{i:02d}") for i in range(32, 48)]
        await until(hass, entry, lambda: update_ids(hass, entry.entry_id, fridge.id) == [])
        warnings = [
            r for r in caplog.records if "announces more models than Home Assistant shows" in r.message
        ]
        assert len(warnings) == 1
        # The device (and Home Assistant's view of it) keeps working: its other entities are live.
        assert state_of(hass, fridge.id, "connectivity") == "on"

    # The device leaves the household: its update entities go with it.
    fridge.rows = [status(MODEL)]
    async with MeshMember(fridge.member.state.dir, hub.broker, settings=FAST, update_status=fridge.report):
        await until(hass, entry, lambda: update_ids(hass, entry.entry_id, fridge.id) == [MODEL])
    hub_member = await hass.async_add_executor_job(
        lambda: MeshMember(hub.home / "state", hub.broker, settings=FAST)
    )
    async with hub_member:  # the hub revokes it; its next presence carries the CRL
        crl = await hass.async_add_executor_job(
            lambda: HouseholdState(hub.home / "state").revoke([fridge.id])
        )
        hub_member.membership.apply_revocations(crl)
        await until(hass, entry, lambda: update_ids(hass, entry.entry_id, fridge.id) == [])


async def test_install_needs_an_administrator(hass: HomeAssistant, hub: Hub, tmp_path: Path) -> None:
    """S1: Home Assistant 2025.4.4 does not restrict `update.install` (non-admin users have `USER_POLICY`,
    every entity); Hearth's Install refuses them with `Unauthorized` and sends nothing."""
    from homeassistant.auth.permissions.system_policies import USER_POLICY

    assert USER_POLICY == {"entities": True}  # what makes HA's own check let a non-admin through
    entry, fridge = await _setup(hass, hub, tmp_path)
    fridge.rows = [status(MODEL, installed=1, available=2, state="awaiting-approval")]
    sent: list[tuple[str, str, int]] = []

    async def approve(device_id: str, name: str, sequence: int) -> None:
        sent.append((device_id, name, sequence))
        fridge.rows = [status(MODEL, installed=1, available=2, state="fetching", progress=0.1)]

    entry.runtime_data.member.approve_update = approve  # the mesh message itself is tested agent-side
    admin: User = await hass.auth.async_create_user("admin", group_ids=["system-admin"])  # the owner
    member: User = await hass.auth.async_create_user("member", group_ids=["system-users"])
    assert not member.is_admin and admin.is_admin
    async with fridge.member:
        await until(hass, entry, lambda: (eid := entity_id(hass, fridge.id, MODEL)) is not None
                    and hass.states.get(eid) is not None and hass.states.get(eid).state == "on")  # fmt: skip
        eid = entity_id(hass, fridge.id, MODEL)
        before = dict(hass.states.get(eid).attributes)  # type: ignore[union-attr]
        with pytest.raises(Unauthorized) as refused:
            await hass.services.async_call("update", "install", {"entity_id": eid}, blocking=True,
                                           context=Context(user_id=member.id))  # fmt: skip
        assert (refused.value.user_id, refused.value.entity_id) == (member.id, eid)
        assert sent == []  # nothing went to the device
        assert dict(hass.states.get(eid).attributes) == before  # type: ignore[union-attr]
        # The administrator's Install approves it; the device starts (its next presence says so).
        await hass.services.async_call("update", "install", {"entity_id": eid}, blocking=True,
                                       context=Context(user_id=admin.id))  # fmt: skip
        assert sent == [(fridge.id, MODEL, 2)]
        # Home Assistant itself (an automation: no user, written by an administrator) may, as it may call
        # Home Assistant's own admin-only actions.
        fridge.rows = [status(MODEL, installed=2, available=3, state="awaiting-approval")]
        await until(hass, entry, lambda: hass.states.get(eid).attributes.get("latest_version") == "3")  # type: ignore[union-attr]
        await hass.services.async_call(
            "update", "install", {"entity_id": eid}, blocking=True, context=Context()
        )
        assert sent == [(fridge.id, MODEL, 2), (fridge.id, MODEL, 3)]
