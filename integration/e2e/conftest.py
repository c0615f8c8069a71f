"""The end-to-end setup, built once for the module: a real Mosquitto; a household of two real agents
(`hearth run`: the hub with the real SmolLM2 pack; a fridge panel, paired with `hearth pair`, that also
announces itself to Home Assistant over MQTT discovery); a real headless `hass` with the Hearth
component, paired through its config flow over REST with a setup code from `hearth household invite`.
Runs in Home Assistant's venv (make test-ha-e2e); every process is stopped by its PID."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # benchmarks.rigs, shared with the agent's tests

from benchmarks.rigs.brokers import Mosquitto, run_mosquitto  # noqa: E402
from benchmarks.rigs.headless_hass import LOCAL_INTEGRATIONS, HeadlessHass, run_hass  # noqa: E402
from household import Device, join, new_household  # noqa: E402

RELEASE_SCRIPT = REPO / "integration" / "scripts" / "build_release.py"
PROMPT = "What is the capital of France? Answer in one sentence."


@dataclass
class Household:
    broker: Mosquitto
    hub: Device
    fridge: Device

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker.port}"


@pytest.fixture(scope="module")
def household(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Household]:
    root = tmp_path_factory.mktemp("household")
    with run_mosquitto(root / "broker") as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        hub = new_household(root, url)
        fridge = join(hub, Device("fridge", "fridge-panel", root / "fridge", url), "appliance")
        fridge.write_config("[home_assistant]\nmqtt_discovery = true\n")
        yield Household(broker, hub, fridge)


@pytest.fixture(scope="module")
def hass(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadlessHass]:
    """Home Assistant with the UI, its config panels, and Assist (conversation + its pipelines)."""
    integrations = {**LOCAL_INTEGRATIONS, "assist_pipeline": None}
    root = tmp_path_factory.mktemp("hass")
    component = _released_component(root)
    with run_hass(root / "config", custom_components=[component], integrations=integrations) as running:
        yield running


def _released_component(root: Path) -> Path:
    """The component as HACS installs it: the release asset (make release: dist/hearth.zip) built from
    this checkout and unpacked, not the source folder."""
    import subprocess
    import zipfile

    built = subprocess.run([sys.executable, str(RELEASE_SCRIPT), "--out", str(root / "dist")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    target = root / "release" / "hearth"
    with zipfile.ZipFile(root / "dist" / "hearth.zip") as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="module")
def entry(hass: HeadlessHass, household: Household) -> Iterator[dict[str, Any]]:
    """Home Assistant joins the household (its config flow, as the UI drives it); then the agents run.
    Yields the config entry."""

    async def pair(code: str) -> dict[str, Any]:
        async with hass.client() as api:
            return await api.config_flow("hearth", {"broker": household.url, "setup_code": code,
                                                    "name": "Home Assistant"})  # fmt: skip

    with household.hub.invite("hub") as code:
        result = asyncio.run(pair(code))
        assert result["type"] == "create_entry", result
    with household.hub.run(), household.fridge.run():
        yield result["result"]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser's screenshots go: $HEARTH_SCREENSHOTS (make screenshots: docs/screenshots)."""
    chosen = os.environ.get("HEARTH_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
