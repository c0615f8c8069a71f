"""Discovered households: zeroconf (a hub's `_hearth._tcp.local.` advert) and MQTT (Home Assistant's
own broker carries a household's presence, or a hub's open invitation, matched by the manifest).
Joining still takes the setup code; a known household's new broker address is taken only once the
household's own devices are heard through it (an advert is unauthenticated)."""

from __future__ import annotations

import asyncio
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from edge_agent.mesh.advertisement import HouseholdAdvert
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.settings import broker_host_port
from edge_agent.mesh.state import HouseholdState
from homeassistant import config_entries
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.hearth.const import CONF_BROKER, CONF_CODE, CONF_NAME, DOMAIN

from .conftest import Broker, Hub, _stop
from .test_config_flow import _paired_entry
from .test_devices import FAST


def _zeroconf(properties: dict[str, str]) -> ZeroconfServiceInfo:
    return ZeroconfServiceInfo(
        ip_address=ip_address("127.0.0.1"), ip_addresses=[ip_address("127.0.0.1")], port=1883,
        hostname="hub.local.", type="_hearth._tcp.local.", name="hub._hearth._tcp.local.",
        properties=properties,
    )  # fmt: skip


def _advert(hub: Hub, broker: str) -> dict[str, str]:
    household = HouseholdState(hub.home / "state").load().certificate.household_id
    return HouseholdAdvert.model_validate(
        {"hh": household, "broker": broker, "name": "hub", "class": "hub"}
    ).properties()


async def _join(hass: HomeAssistant, hub: Hub, flow: dict) -> dict:  # type: ignore[type-arg]
    assert flow["type"] is FlowResultType.FORM and flow["step_id"] == "discovery_confirm", flow
    invite, code = hub.invite()
    try:
        return await hass.config_entries.flow.async_configure(  # type: ignore[return-value]
            flow["flow_id"], {CONF_CODE: code, CONF_NAME: "Home Assistant"}
        )
    finally:
        _stop(invite)


async def test_a_zeroconf_advert_offers_the_household_and_the_code_joins_it(
    hass: HomeAssistant, hub: Hub
) -> None:
    properties = await hass.async_add_executor_job(_advert, hub, hub.broker)
    flow = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=_zeroconf(properties)
    )
    assert flow["description_placeholders"]["broker"] == hub.broker
    result = await _join(hass, hub, flow)
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["result"].unique_id == properties["hh"] and result["data"][CONF_BROKER] == hub.broker


async def test_a_hostile_or_foreign_advert_is_ignored(hass: HomeAssistant) -> None:
    for properties in (
        {"v": "1", "hh": "not-a-household", "broker": "mqtt://h:1", "name": "x", "class": "hub"},
        {"v": "1", "hh": "0123456789abcdef", "broker": "http://evil.example/", "name": "x", "class": "hub"},
        {"v": "9", "hh": "0123456789abcdef", "broker": "mqtt://h:1", "name": "x", "class": "hub"},
        {"model": "some other _hearth service"},
    ):
        result = await hass.config_entries.flow.async_init(
            DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=_zeroconf(properties)
        )
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "not_hearth"), properties
    assert not hass.config_entries.async_entries(DOMAIN)


async def test_a_known_household_moves_only_to_a_broker_that_carries_it(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    """The household's broker moved: an advert names the new address. A rogue address (a broker
    carrying nothing of this household) is ignored; the real one, where the hub is heard, is taken."""
    entry = await _paired_entry(hass, hub)
    (tmp_path / "rogue").mkdir()
    (tmp_path / "moved").mkdir()
    rogue, moved = Broker(tmp_path / "rogue"), Broker(tmp_path / "moved")
    await hass.async_add_executor_job(rogue.start)
    await hass.async_add_executor_job(moved.start)
    try:
        hub_member = await hass.async_add_executor_job(
            lambda: MeshMember(hub.home / "state", moved.url, settings=FAST)
        )
        async with hub_member:  # the hub is on the new broker now
            for url, expected in ((rogue.url, hub.broker), (moved.url, moved.url)):
                properties = await hass.async_add_executor_job(_advert, hub, url)
                result = await hass.config_entries.flow.async_init(
                    DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=_zeroconf(properties)
                )
                assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
                await hass.async_block_till_done()
                assert entry.data[CONF_BROKER] == expected
            assert entry.runtime_data.member.broker == moved.url  # reloaded onto the new address
    finally:
        rogue.stop()
        moved.stop()


async def test_home_assistants_mqtt_broker_carrying_an_invitation_starts_the_flow(
    hass: HomeAssistant, hub: Hub
) -> None:
    """The real path: HA's `mqtt` integration on the hub's Mosquitto; `hearth household invite`
    publishes its open invitation; the manifest's MQTT matcher starts Hearth's flow."""
    host, port = broker_host_port(hub.broker)
    await hass.async_add_executor_job(Path(hass.config.path("configuration.yaml")).write_text, "")
    mqtt = MockConfigEntry(domain="mqtt", data={"broker": host, "port": port}, version=1, minor_version=2)
    mqtt.add_to_hass(hass)
    assert await hass.config_entries.async_setup(mqtt.entry_id)
    discovered = asyncio.Event()

    @callback
    def heard(_: Event[Any]) -> None:
        discovered.set()

    unsubscribe = hass.bus.async_listen(config_entries.EVENT_FLOW_DISCOVERED, heard)
    invite, code = hub.invite()
    try:
        async with asyncio.timeout(20):  # the manifest's MQTT matcher starts Hearth's flow
            await discovered.wait()
        [flow] = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        assert flow["context"]["source"] == config_entries.SOURCE_MQTT
        assert flow["step_id"] == "discovery_confirm"
        result = await hass.config_entries.flow.async_configure(
            flow["flow_id"], {CONF_CODE: code, CONF_NAME: "Home Assistant"}
        )
    finally:
        _stop(invite)
        unsubscribe()
        await hass.config_entries.async_unload(mqtt.entry_id)  # before the broker stops
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["data"][CONF_BROKER] == hub.broker


async def test_mqtt_discovery_of_a_presence_topic_and_of_a_closed_invitation(
    hass: HomeAssistant, hub: Hub
) -> None:
    host, port = broker_host_port(hub.broker)
    MockConfigEntry(domain="mqtt", data={"broker": host, "port": port}).add_to_hass(hass)
    household = await hass.async_add_executor_job(
        lambda: HouseholdState(hub.home / "state").load().certificate.household_id
    )

    def info(topic: str, payload: bytes) -> MqttServiceInfo:
        return MqttServiceInfo(topic=topic, payload=payload, qos=0, retain=True, subscribed_topic=topic,
                               timestamp=time.time())  # fmt: skip

    closed = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=info("hearth/pair/open", b"")
    )
    assert (closed["type"], closed["reason"]) == (FlowResultType.ABORT, "invitation_closed")
    for topic in ("hearth/not-a-household/presence/x", "other/thing"):
        foreign = await hass.config_entries.flow.async_init(
            DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=info(topic, b"\x00")
        )
        assert (foreign["type"], foreign["reason"]) == (FlowResultType.ABORT, "not_hearth")
    flow = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT},
        data=info(f"hearth/{household}/presence/{'ab' * 16}", b"\x00sealed"),
    )  # fmt: skip
    assert flow["description_placeholders"]["broker"] == hub.broker
    result = await _join(hass, hub, flow)
    assert result["type"] is FlowResultType.CREATE_ENTRY and result["result"].unique_id == household
    again = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT},
        data=info(f"hearth/{household}/presence/{'cd' * 16}", b"\x00sealed"),
    )  # fmt: skip
    assert (again["type"], again["reason"]) == (FlowResultType.ABORT, "already_configured")


async def test_mqtt_discovery_without_an_mqtt_broker_in_home_assistant_is_ignored(
    hass: HomeAssistant,
) -> None:
    info = MqttServiceInfo(topic="hearth/pair/open", payload=b"{}", qos=0, retain=True,
                           subscribed_topic="hearth/pair/open", timestamp=time.time())  # fmt: skip
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=info
    )
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "not_hearth")


async def test_an_advertised_broker_that_cannot_be_reached_is_not_taken(
    hass: HomeAssistant, hub: Hub
) -> None:
    entry = await _paired_entry(hass, hub)
    properties = await hass.async_add_executor_job(_advert, hub, "mqtt://127.0.0.1:9")
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=_zeroconf(properties)
    )
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
    assert entry.data[CONF_BROKER] == hub.broker
