"""An update entity per model pack per device, from the updates each device announces. Real agents on a
real Mosquitto: the hub (`hearth run`, real packs) publishes sequence 2 of the en→pt translation pack;
the fridge panel (`hearth run`, its own store, `[updates] approval = "ask"`) finds it and waits. Home
Assistant shows "0 → 2"; Install approves it; the fridge fetches it from the hub, verifies, health-
checks and activates it; the entity then shows 2 installed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from edge_agent.mesh.state import HouseholdState
from homeassistant.components.update import ATTR_INSTALLED_VERSION, ATTR_LATEST_VERSION
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er

from custom_components.hearth.const import DOMAIN

from .conftest import REPO, Hub, _stop, add_member, agent_python, run_agent
from .test_config_flow import _paired_entry
from .test_devices import until

PACK = "bergamot-tiny11-en-pt@int8"
MODEL = "bergamot-tiny11-en-pt"
INSTALL_PACK = """
import sys
from pathlib import Path
from edge_agent.models.store import PackStore
source = PackStore().get(sys.argv[1])
PackStore(Path(sys.argv[2])).install(source.path, source.manifest)
"""


def _publish(hub: Hub) -> None:
    """The hub's update key, a key set listing it, and sequence 2 signed (`hearth` on the hub)."""
    packs = os.environ.get("HEARTH_HOME", str(REPO / ".hearth"))
    made = hub.hearth("household", "update-key")
    assert made.returncode == 0, made.stderr
    card = re.search(r"\S+:[0-9a-f]{64}", made.stdout)
    assert card is not None, made.stdout
    listed = hub.hearth("household", "update-keys", card.group(0))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    hub.env["HEARTH_HOME"] = packs  # the pack comes from the real store
    published = hub.hearth("models", "publish", PACK, "--sequence", "2", "--for", "appliance")
    assert published.returncode == 0, published.stdout + published.stderr


async def test_install_approves_the_sequence_a_device_waits_for(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _paired_entry(hass, hub)
    runtime = entry.runtime_data
    home = tmp_path / "fridge"
    await hass.async_add_executor_job(
        lambda: add_member(hub, home, "fridge-panel", serves=["translate"], device_class="appliance")
    )
    packs = tmp_path / "fridge-packs"
    real = Path(os.environ.get("HEARTH_HOME", str(REPO / ".hearth")))
    await hass.async_add_executor_job(
        lambda: agent_python(INSTALL_PACK, PACK, str(packs / "store"), packs=real)
    )
    config = home / "fridge.toml"
    config.write_text(
        f'[agent]\nname = "fridge-panel"\nprofile = "fridge-panel"\n'
        f'[mesh]\nenabled = true\nbroker = "{hub.broker}"\nstate_dir = "{home}"\npresence_interval_s = 1.0\n'
        '[updates]\napproval = "ask"\ninterval_s = 5\n'
    )
    fridge_id = await hass.async_add_executor_job(lambda: HouseholdState(home).load().certificate.device_id)
    registry = er.async_get(hass)

    def entity_id() -> str | None:
        return registry.async_get_entity_id("update", DOMAIN, f"{fridge_id}-update-{MODEL}")

    def attrs() -> dict[str, object]:
        eid = entity_id()
        state = hass.states.get(eid) if eid else None
        return dict(state.attributes) | {"state": state.state} if state else {}

    with hub.run():
        fridge = run_agent(home, config, packs, tmp_path / "fridge.log")
        try:
            await hass.async_add_executor_job(_publish, hub)
            # The fridge finds sequence 2 on its next round and waits: Home Assistant offers it.
            await until(hass, entry, lambda: attrs().get(ATTR_LATEST_VERSION) == "2", timeout=120)
            seen = attrs()
            assert (seen["state"], seen[ATTR_INSTALLED_VERSION]) == (STATE_ON, "0")
            # The hub seeds sequence 2 but it is not for hubs: nothing to install there.
            hub_id = next(c.device_id for c in runtime.devices() if c.name == "hub")
            hub_entity = registry.async_get_entity_id("update", DOMAIN, f"{hub_id}-update-{MODEL}")
            assert hub_entity is not None and hass.states.get(hub_entity).state == STATE_OFF
            with pytest.raises(HomeAssistantError, match="No update available"):
                await hass.services.async_call("update", "install", {"entity_id": hub_entity}, blocking=True)
            # Install on the fridge's: approved; it fetches, verifies and activates sequence 2.
            await hass.services.async_call("update", "install", {"entity_id": entity_id()}, blocking=True)
            await until(hass, entry, lambda: attrs().get(ATTR_INSTALLED_VERSION) == "2", timeout=120)
            assert attrs()["state"] == STATE_OFF
        finally:
            _stop(fridge)
    log = (tmp_path / "fridge.log").read_text()
    assert "approved bergamot-tiny11-en-pt sequence 2" in log, log[-3000:]
