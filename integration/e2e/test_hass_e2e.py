"""Home Assistant end to end: a real headless `hass` with the Hearth component, a real Mosquitto and two
real agents. A conversation turn through HA's WebSocket API is answered by the hub via the mesh; a real
browser (Debian's chromium, headless, through Selenium) logs in, finds the household's devices and
entities and asks Assist; MQTT discovery makes the fridge's sensors appear; nothing reaches outside the
machine."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from benchmarks.rigs.headless_hass import HassClient, HeadlessHass
from browser import Browser, chromium
from conftest import PROMPT, Household

MAX_TOKENS = 256  # the component's (conversation.MAX_TOKENS)
BENCHMARKED_S = 180.0  # an agent benchmarks itself before it offers a task


@pytest.fixture(scope="module")
def hub_answer(hass: HeadlessHass, household: Household, entry: dict[str, Any]) -> str:
    """Once the hub offers chat (it benchmarks itself first: then Home Assistant shows its speed), its
    own answer to PROMPT, greedy (its running agent, asked locally)."""

    async def offers_chat() -> None:
        async with hass.client() as api:
            await wait_for_entity(api, "hearth", f"{household.hub.device_id}-generate_speed", BENCHMARKED_S)

    with explained(hass, household):
        asyncio.run(offers_chat())
    return household.hub.chat(PROMPT, MAX_TOKENS).strip()


@contextlib.contextmanager
def explained(hass: HeadlessHass, household: Household) -> Iterator[None]:
    """A wait that times out fails with what the agents and Home Assistant logged."""
    try:
        yield
    except TimeoutError as exc:
        logs = [f"--- {d.name} ---\n{d.log_tail()}" for d in (household.hub, household.fridge)]
        pytest.fail(f"{exc}\n" + "\n".join([*logs, f"--- hass ---\n{hass.log_tail()}"]))


async def entity_id(api: HassClient, platform: str, unique_id: str) -> str | None:
    found = [
        e["entity_id"]
        for e in await api.entities()
        if (e["platform"], e["unique_id"]) == (platform, unique_id)
    ]
    return found[0] if found else None


async def wait_for_entity(
    api: HassClient,
    platform: str,
    unique_id: str,
    timeout: float,
    unset: tuple[str, ...] = ("unknown", "unavailable"),
) -> dict[str, Any]:
    """The entity's state once it exists and has a value."""

    async def ready(states: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        ident = await entity_id(api, platform, unique_id)
        state = states.get(ident) if ident else None
        return state if state and state["state"] not in unset else None

    return await api.wait_for_states(ready, timeout)


async def test_a_conversation_turn_over_websocket_is_answered_by_the_hub(
    hass: HeadlessHass, household: Household, entry: dict[str, Any], hub_answer: str
) -> None:
    async with hass.client() as api:
        agent = await entity_id(api, "hearth", f"{entry['entry_id']}-conversation")
        assert agent is not None and agent.startswith("conversation.")
        result = await api.converse(PROMPT, agent)
    assert result["response"]["response_type"] == "action_done"
    speech = result["response"]["speech"]["plain"]
    assert speech["extra_data"] == {"served_by": "hub", "failovers": 0}
    assert speech["speech"].strip() == hub_answer


def _check_loopback_only(pids: list[int]) -> None:
    for pid in pids:
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            for conn in proc.net_connections(kind="inet"):
                assert not conn.raddr or conn.raddr.ip in ("127.0.0.1", "::1"), (proc.name(), conn)


def _assist(browser: Browser, answer: str, screenshots: Path) -> None:
    """The Assist dialog (the preferred pipeline is the household's chat): type, send, read the answer."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.click(browser.element_with_text("Overview"))
    browser.click(browser.element_with_label("Assist"))
    browser.wait_for_texts("Hearth", "How can I assist?")
    ActionChains(browser.driver).send_keys(PROMPT + Keys.ENTER).perform()  # the request field has focus
    texts = browser.wait_for_texts(PROMPT, answer)
    assert texts.index(answer) > texts.index(PROMPT)
    browser.screenshot(screenshots / "ha-assist.png")


async def test_a_browser_logs_in_and_finds_the_households_devices_and_entities(
    hass: HeadlessHass,
    household: Household,
    entry: dict[str, Any],
    hub_answer: str,
    screenshots: Path,
    tmp_path: Path,
) -> None:
    async with hass.client() as api:
        with explained(hass, household):
            await wait_for_entity(api, "hearth", f"{household.fridge.device_id}-connectivity", 60)
        entities = [e for e in await api.entities() if e["config_entry_id"] == entry["entry_id"]]
        devices = [d for d in await api.devices() if entry["entry_id"] in d["config_entries"]]
        # Assist's preferred pipeline answers with the household's chat (what a user sets in Settings).
        agent = await entity_id(api, "hearth", f"{entry['entry_id']}-conversation")
        pipeline = await api.ws("assist_pipeline/pipeline/create", name="Hearth", language="en",
                                conversation_engine=agent, conversation_language="en", stt_engine=None,
                                stt_language=None, tts_engine=None, tts_language=None, tts_voice=None,
                                wake_word_entity=None, wake_word_id=None)  # fmt: skip
        await api.ws("assist_pipeline/pipeline/set_preferred", pipeline_id=pipeline["id"])
    assert sorted(d["name"] for d in devices) == sorted(["hub", "fridge", entry["title"]])

    with chromium(tmp_path) as browser:
        browser.log_in(hass.url, hass.username, hass.password)
        # The integration's page: the household entry, its devices and entities.
        browser.driver.get(f"{hass.url}/config/integrations/integration/hearth")
        texts = browser.wait_for_texts("Hearth", entry["title"], f"{len(devices)} devices")
        shown = [int(m[1]) for t in texts if (m := re.fullmatch(r"(\d+) entities", t))]
        assert shown and min(shown) >= len(entities), (shown, entities)  # more may have come since
        browser.screenshot(screenshots / "ha-integration.png")
        # Its devices: the hub, the fridge panel, and the household itself (the conversation agent).
        browser.click(browser.element_with_text(f"{len(devices)} devices"))
        browser.wait_for_texts("hub", "fridge", entry["title"], "fridge-panel")
        browser.screenshot(screenshots / "ha-devices.png")
        # The fridge's page: on the mesh, connected via the hub.
        browser.click(browser.element_with_text("fridge"))
        browser.wait_for_texts("fridge-panel", "appliance", "Connected via", "hub", "On the mesh",
                               "Connected", "Queue depth", "Requests offloaded")  # fmt: skip
        # The hub's page, through that link: what it serves and how fast, the fridge behind it.
        browser.click(browser.element_with_text("hub"))
        texts = browser.wait_for_texts("Chat speed", "Translation speed", "Requests served",
                                       "On the mesh", "Connected devices", "fridge")  # fmt: skip
        assert texts[texts.index("Chat speed") + 1].endswith(" tok/s")
        browser.screenshot(screenshots / "ha-device.png")
        _assist(browser, hub_answer, screenshots)
        _check_loopback_only([browser.driver.service.process.pid])


async def test_mqtt_discovery_makes_the_fridges_sensors_appear(
    hass: HeadlessHass, household: Household, entry: dict[str, Any]
) -> None:
    """Home Assistant's own MQTT integration on the same Mosquitto; the fridge (`[home_assistant]
    mqtt_discovery = true`) is one MQTT device with its sensors, beside the Hearth component's."""
    async with hass.client() as api:
        port = household.broker.port
        result = await api.config_flow("mqtt", {"broker": "127.0.0.1", "port": port})
        assert result["type"] == "create_entry", result
        # Its MQTT device and entities are named by its discovery id (a keyed hash), never its device id.
        prefix = f"hearth_{household.fridge.discovery_id}"
        states = {}
        with explained(hass, household):
            for key in ("mesh", "queue_depth", "free_model_ram", "requests_served", "requests_offloaded"):
                states[key] = await wait_for_entity(api, "mqtt", f"{prefix}_{key}", timeout=60)
        mesh = states["mesh"]
        assert mesh["state"] == "on" and mesh["entity_id"].startswith("binary_sensor.")
        assert int(states["queue_depth"]["state"]) >= 0 and float(states["free_model_ram"]["state"]) > 0
        assert states["free_model_ram"]["attributes"]["unit_of_measurement"] == "MB"
        [device] = [d for d in await api.devices() if ["mqtt", prefix] in d["identifiers"]]
        assert device["name"] == "fridge" and device["model"] == "fridge-panel"
        mqtt_ids = [e["unique_id"] for e in await api.entities() if e["platform"] == "mqtt"]
        assert not [u for u in mqtt_ids if household.fridge.device_id in u], mqtt_ids


async def test_nothing_reaches_outside_the_machine(
    hass: HeadlessHass, household: Household, entry: dict[str, Any]
) -> None:
    """Only local integrations run (no default_config, no onboarding's extras), analytics never
    started (onboarding was pre-seeded), nothing was pip-installed, and HA logged no error (but for
    native helpers this machine need not have)."""
    async with hass.client() as api:
        components = {c.split(".")[0] for c in (await api.rest("GET", "/api/config"))["components"]}
        analytics = await api.ws("analytics")
    unexpected = components - LOCAL_ONLY
    assert not unexpected, f"integrations outside the local-only list were loaded: {sorted(unexpected)}"
    assert analytics["onboarded"] is False and not analytics["preferences"].get("base")
    log = hass.log.read_text()
    assert "Skipping pip installation" in log
    errors = [
        line for line in log.splitlines() if " ERROR " in line and not any(h in line for h in NO_NATIVE)
    ]
    assert not errors, "\n".join(errors)
    agents = [d.proc.pid for d in (household.hub, household.fridge) if d.proc is not None]
    _check_loopback_only([hass.proc.pid, household.broker.proc.pid, *agents])


NO_NATIVE = ("[haffmpeg.", "[homeassistant.components.camera.img_util]")
"""Errors about native helpers that are not installed: the ffmpeg binary (audio; text-only Assist needs
none) and libturbojpeg (camera snapshots)."""
LOCAL_ONLY = {
    # What `frontend`, `config`, `conversation` and `assist_pipeline` bring, and HA's core integrations.
    "analytics", "api", "application_credentials", "assist_pipeline", "auth", "automation", "backup",
    "binary_sensor", "blueprint", "config", "conversation", "counter", "device_automation", "diagnostics",
    "ffmpeg", "file_upload", "frontend", "hardware", "homeassistant", "http", "image_upload", "input_boolean",
    "input_button", "input_datetime", "input_number", "input_select", "input_text", "intent", "logger",
    "lovelace", "network", "onboarding", "persistent_notification", "person", "repairs", "scene", "schedule",
    "script", "search", "sensor", "stt", "system_health", "system_log", "tag", "timer", "trace",
    "tts", "update", "wake_word", "websocket_api", "zone",
    # Ours, and HA's MQTT client (pointed at the household's loopback Mosquitto).
    "hearth", "mqtt",
}  # fmt: skip
