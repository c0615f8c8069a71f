"""Discovered households: zeroconf (a hub's `_hearth._tcp.local.` advert) and MQTT (Home Assistant's
own broker carries a household's presence, or a hub's open invitation, matched by the manifest).
Joining still takes the setup code. An advert is unauthenticated (S3, issue 21): a known household's new
broker address is taken at once only when the broker proves itself with the household's pinned CA; a
plain mqtt:// one only when the user confirms it (and the household is heard there); never a downgrade."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from edge_agent.mesh.advertisement import HouseholdAdvert
from edge_agent.mesh.broker_pki import BrokerPki
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.settings import broker_host_port
from edge_agent.mesh.state import HouseholdState
from homeassistant import config_entries
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.hearth import config_flow
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


async def _advertised(hass: HomeAssistant, hub: Hub, url: str) -> dict:  # type: ignore[type-arg]
    properties = await hass.async_add_executor_job(_advert, hub, url)
    return await hass.config_entries.flow.async_init(  # type: ignore[return-value]
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=_zeroconf(properties)
    )


async def test_a_plain_mqtt_household_moves_only_when_the_user_confirms(
    hass: HomeAssistant, hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 (issue 21): an advert is unauthenticated and a plain broker cannot prove whose it is (a relay
    carries the household's signed presence too), so a new mqtt:// address is only offered, showing
    both addresses; nothing changes until the user confirms. Confirmed, a broker where the household
    is not heard is refused and the entry runs on where it was; the real new one is taken."""
    monkeypatch.setattr(config_flow, "DISCOVERY_CHECK_S", 2.0)
    entry = await _paired_entry(hass, hub)
    (tmp_path / "rogue").mkdir()
    (tmp_path / "moved").mkdir()
    rogue, moved = Broker(tmp_path / "rogue"), Broker(tmp_path / "moved")
    await hass.async_add_executor_job(rogue.start)
    await hass.async_add_executor_job(moved.start)
    try:
        flow = await _advertised(hass, hub, rogue.url)
        assert (flow["type"], flow["step_id"]) == (FlowResultType.FORM, "broker_moved")
        assert flow["description_placeholders"] == {
            "household": entry.title,
            "old": hub.broker,
            "new": rogue.url,
        }
        # Nothing moved, the entry still serves; a second advert asks nothing more.
        assert entry.data[CONF_BROKER] == hub.broker and entry.state is ConfigEntryState.LOADED
        assert entry.runtime_data.member.broker == hub.broker and entry.runtime_data.connected
        again = await _advertised(hass, hub, moved.url)
        assert (again["type"], again["reason"]) == (FlowResultType.ABORT, "already_in_progress")
        # The user confirms the rogue address: the household is not heard there; nothing changes.
        result = await hass.config_entries.flow.async_configure(flow["flow_id"], {})
        assert (result["type"], result["errors"]) == (FlowResultType.FORM, {"base": "not_heard"})
        await hass.async_block_till_done()
        assert entry.data[CONF_BROKER] == hub.broker and entry.state is ConfigEntryState.LOADED
        assert entry.runtime_data.member.broker == hub.broker
        hass.config_entries.flow.async_abort(flow["flow_id"])
        # The household really moved (the hub is on the new broker) and the user confirms: taken.
        hub_member = await hass.async_add_executor_job(
            lambda: MeshMember(hub.home / "state", moved.url, settings=FAST)
        )
        async with hub_member:
            flow = await _advertised(hass, hub, moved.url)
            result = await hass.config_entries.flow.async_configure(flow["flow_id"], {})
            assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "broker_moved")
            await hass.async_block_till_done()
            assert entry.data[CONF_BROKER] == moved.url and entry.state is ConfigEntryState.LOADED
            assert entry.runtime_data.member.broker == moved.url  # reloaded onto the new address
    finally:
        rogue.stop()
        moved.stop()


@pytest.mark.parametrize(
    ("current", "announced", "pinned", "move"),
    [
        ("mqtt://hub.lan:1883", "mqtt://10.0.0.9:1883", False, "confirm"),  # plain: only the user can tell
        ("mqtts://hub.lan:8883", "mqtt://10.0.0.9:1883", True, "ignore"),  # a downgrade: never
        ("mqtts://hub.lan:8883", "mqtts://10.0.0.9:8883", True, "verify"),  # the pinned CA decides
        ("mqtts://hub.lan:8883", "mqtts://10.0.0.9:8883", False, "ignore"),  # nothing to check it with
        ("mqtt://hub.lan:1883", "mqtts://hub.lan:8883", True, "verify"),  # an upgrade, checked
        ("mqtt://hub.lan:1883", "mqtts://hub.lan:8883", False, "confirm"),
    ],
)
def test_what_an_advert_for_a_known_household_may_do(
    current: str, announced: str, pinned: bool, move: str
) -> None:
    assert config_flow.broker_move(current, announced, pinned) == move


async def test_a_tls_household_moves_only_to_a_broker_its_pinned_ca_vouches_for(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    """S3, TLS: the household's broker CA was pinned at pairing. An advert naming a plain mqtt:// broker
    (a downgrade) or an mqtts:// broker with another CA's certificate is ignored without a question and
    without touching the entry; one whose certificate the household's CA signed for that address is
    taken at once."""
    entry = await _paired_entry(hass, hub)
    home = Path(hass.config.path(".storage", "hearth", entry.unique_id))
    household = entry.unique_id
    hub_pki, impostor_pki = BrokerPki(hub.home / "state"), BrokerPki(tmp_path / "impostor")
    (tmp_path / "impostor").mkdir()

    def certificates() -> None:
        hub_pki.create_ca(household)
        shutil.copy(hub_pki.ca_cert_path, BrokerPki(home).ca_cert_path)  # pinned, as pairing does
        hub_pki.issue_server(["127.0.0.1"], tmp_path / "real.crt", tmp_path / "real.key")
        impostor_pki.create_ca(household)  # same household id, another CA: a relay's own certificate
        impostor_pki.issue_server(["127.0.0.1"], tmp_path / "fake.crt", tmp_path / "fake.key")

    await hass.async_add_executor_job(certificates)
    real = TlsBroker(tmp_path, "real", hub_pki.ca_cert_path)
    fake = TlsBroker(tmp_path, "fake", impostor_pki.ca_cert_path)
    await hass.async_add_executor_job(real.start)
    await hass.async_add_executor_job(fake.start)
    try:
        # A relay with a certificate of its own: ignored, no question asked, the entry untouched.
        result = await _advertised(hass, hub, fake.url)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        await hass.async_block_till_done()
        assert entry.data[CONF_BROKER] == hub.broker and entry.state is ConfigEntryState.LOADED
        assert entry.runtime_data.connected  # its connection was never touched
        assert not hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        # The household's broker, its certificate signed by the pinned CA for that address: taken at once.
        result = await _advertised(hass, hub, real.url)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        await hass.async_block_till_done()
        assert entry.data[CONF_BROKER] == real.url and entry.state is ConfigEntryState.LOADED
        # Now on TLS: an advert back to plain MQTT (a downgrade) is ignored outright.
        result = await _advertised(hass, hub, hub.broker)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        await hass.async_block_till_done()
        assert entry.data[CONF_BROKER] == real.url
        assert not hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    finally:
        real.stop()
        fake.stop()


class TlsBroker(Broker):
    """Mosquitto on a TLS listener with ``name``.crt/.key (clients' certificates optional)."""

    def __init__(self, directory: Path, name: str, ca: Path) -> None:
        super().__init__(directory)
        self.conf = directory / f"{name}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
            f"cafile {ca}\ncertfile {directory / f'{name}.crt'}\nkeyfile {directory / f'{name}.key'}\n"
            "require_certificate false\n" + ("user root\n" if os.geteuid() == 0 else "")
        )

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


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
