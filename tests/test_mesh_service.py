"""Agents on a real Mosquitto: pairing over MQTT, hostile input while serving, revocation, routing policy."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish as paho_publish
import pytest

from benchmarks.rigs.brokers import Mosquitto, run_mosquitto
from benchmarks.rigs.meshkit import config, provision, service
from edge_agent.client.schemas import EmbedRequest, GenerateRequest
from edge_agent.errors import NoRouteError
from edge_agent.mesh.household import HouseholdRoot
from edge_agent.mesh.interfaces import Address, Channel
from edge_agent.mesh.pairing import DevicePairing, Invitation, PairingError, new_session
from edge_agent.mesh.pairing_link import pair_with_hub, serve_invitation
from edge_agent.mesh.peers import PeerTable
from edge_agent.mesh.protocol import GroupKey, Offer, Presence
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.mesh.transports.mqtt import MqttClient
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.router import Router
from edge_agent.router_settings import RouterSettings
from tests.support.meshsim import until

pytestmark = pytest.mark.slow  # a real Mosquitto, agents on the built packs


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


async def test_pairing_over_mqtt_then_the_new_device_is_served(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    hub_state, fridge_state = HouseholdState(tmp_path / "hub"), HouseholdState(tmp_path / "fridge")
    root, root_file = hub_state.load_root()
    inv = Invitation(
        root, bytes.fromhex(root_file.group_key), roster=[hub_state.load().certificate], requests=["generate"]
    )  # the operator lets the panel offload chat (`--requests`)

    def make(code: str):  # type: ignore[no-untyped-def]
        return lambda inv_id, session: DevicePairing(
            fridge_state.identity,
            code,
            inv_id,
            session=session,
            name="fridge",
            profile="fridge-panel",
            requests=["generate"],
            serves=[],
        )

    wrong_session, session = new_session(), new_session()  # also the client ids, as `hearth pair` does
    async with (
        MqttClient("127.0.0.1", broker.port, client_id="hub-invite") as hub_link,
        MqttClient("127.0.0.1", broker.port, client_id=wrong_session) as wrong_link,
        MqttClient("127.0.0.1", broker.port, client_id=session) as dev_link,
    ):
        serving = asyncio.create_task(
            serve_invitation(hub_link, inv, lambda c: hub_state.record_issued(root, c))
        )
        wrong = "1357-2468" if inv.code != "1357-2468" else "2468-1357"
        with pytest.raises(PairingError, match=r"could not prove|refused"):
            await pair_with_hub(wrong_link, make(wrong), session=wrong_session, timeout=10)
        assert inv.attempts_left == 19 and not serving.done()
        welcome = await pair_with_hub(dev_link, make(inv.code), session=session, timeout=10)
        cert = await asyncio.wait_for(serving, 5)
    assert cert.device_id == fridge_state.identity.device_id == welcome.certificate.device_id
    fridge_state.save(HouseholdFile.from_welcome(welcome))
    assert (tmp_path / "fridge" / "household.json").stat().st_mode & 0o777 == 0o600
    # The running hub never saw the fridge's certificate: it learns it from the fridge's signed presence.
    hub = service(tmp_path / "hub", config("hub", broker.port, "hub"), store)
    fridge = service(tmp_path / "fridge", config("fridge", broker.port, "fridge-panel"), store, serve=False)
    async with hub, fridge:
        await fridge.wait_for_peers("generate", 5)
        routed = fridge.router.generate(GenerateRequest.from_prompt("Say hi.", max_tokens=8))
        assert "".join([c.text async for c in routed]) and routed.served_by == "hub"


async def test_hostile_frames_while_serving_are_dropped_and_the_hub_keeps_serving(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    hub = service(tmp_path / "hub", config("hub", broker.port, "hub"), store)
    fridge = service(tmp_path / "fridge", config("fridge", broker.port, "fridge-panel"), store)
    async with hub, fridge:
        household = hub.mesh.membership.household_id
        req_topic = str(Address(household, hub.mesh.certificate.device_id, Channel.REQUESTS))
        pres_topic = str(Address(household, "f" * 32, Channel.PRESENCE))
        hostile = [os.urandom(n) for n in (1, 57, 300, 5000)] + [
            b"HE" + os.urandom(200),
            b"HE\x01",
            os.urandom((1 << 20) + 100),  # over our 1 MiB frame limit, under the broker's
        ]
        for payload in hostile:
            for topic in (req_topic, pres_topic):
                paho_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=broker.port)
        # A genuine envelope carrying garbage JSON from a real member: decrypts, then fails validation.
        await fridge.wait_for_peers("generate", 5)
        await fridge.mesh.node.send(
            hub.mesh.certificate.device_id,
            Channel.REQUESTS,
            b'{"type": "request", "id": "nope"}',
            session=hub.mesh.node.session,
        )
        routed = fridge.router.generate(GenerateRequest.from_prompt("Say hi.", max_tokens=8))
        assert [c async for c in routed] and routed.served_by == "hub"
        assert await hub.mesh.endpoint.caught_up(10)  # every frame the broker queued for the hub, read
        assert sum(hub.mesh.node.dropped.values()) >= len(hostile) + 1, hub.mesh.node.dropped
        assert hub.mesh.node.dropped["InvalidMessage"] == 1


async def test_revoked_device_is_refused_by_the_hub(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    cfg = config("fridge", broker.port, "fridge-panel", stall_timeout_s=0.5, max_attempts=1)
    hub = service(tmp_path / "hub", config("hub", broker.port, "hub"), store)
    async with hub:
        HouseholdState(tmp_path / "hub").revoke([HouseholdState(tmp_path / "fridge").identity.device_id])
        await hub.mesh.endpoint.publish_presence()  # picks the new CRL up from disk and gossips it
        fridge = service(tmp_path / "fridge", cfg, store)
        async with fridge:
            await fridge.wait_for_peers("generate", 5)
            with pytest.raises(NoRouteError):
                async for _ in fridge.router.generate(GenerateRequest.from_prompt("Say hi.", max_tokens=8)):
                    pass
        assert hub.mesh.node.dropped["NotAMemberError"] >= 1


async def test_revocation_rotates_the_group_key_for_remaining_members_only(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    devices = (("hub", "hub"), ("fridge", "fridge-panel"), ("thief", "phone"), ("car", "car-headunit"))
    for name, profile in devices:
        provision(tmp_path / "hub", tmp_path / name, name, profile)
    hub = service(tmp_path / "hub", config("hub", broker.port, "hub"), store)
    clients = {
        n: service(tmp_path / n, config(n, broker.port, p), store, serve=False)
        for n, p in (("fridge", "fridge-panel"), ("thief", "phone"))
    }
    fridge, thief = clients["fridge"], clients["thief"]
    async with hub, fridge, thief:
        for c in clients.values():
            await c.wait_for_peers("generate", 5)
        assert hub.mesh.node.group_epoch == fridge.mesh.node.group_epoch == thief.mesh.node.group_epoch == 0
        HouseholdState(tmp_path / "hub").revoke([thief.mesh.certificate.device_id])
        await (
            hub.mesh.endpoint.publish_presence()
        )  # picks the revocation up, rotates, seals the key to members
        assert hub.mesh.node.group_epoch == 1
        assert await until(lambda: fridge.mesh.node.group_epoch == 1), "the fridge never got the new key"
        saved = HouseholdState(tmp_path / "fridge").load()
        assert saved.group_epoch == 1 and saved.group_key == hub.mesh.node.group_key.hex()
        assert 0 in saved.past_group_keys  # members that missed the rotation are still readable
        # The revoked device cannot read the hub's adverts any more.
        thief.mesh.node.dropped.clear()
        await hub.mesh.endpoint.publish_presence()
        assert await until(lambda: thief.mesh.node.dropped["ForgedMessageError"] >= 1)
        assert (
            thief.mesh.node.group_epoch == 0
            and hub.mesh.node.group_key not in thief.mesh.node.opener.group_keys.values()
        )
        # The fridge, on the new key, is still served.
        routed = fridge.router.generate(GenerateRequest.from_prompt("Say hi.", max_tokens=4))
        assert "".join([c.text async for c in routed]) and routed.served_by == "hub"
        # A member that was offline during the rotation gets the key when it next shows up.
        car = service(tmp_path / "car", config("car", broker.port, "car-headunit"), store, serve=False)
        async with car:
            assert await until(lambda: car.mesh.node.group_epoch == 1), (
                "the hub did not rekey the late member"
            )
            # Only the hub (an admin certificate) may rotate the key.
            forged = GroupKey(epoch=7, key=os.urandom(32).hex())
            assert await until(lambda: car.mesh.certificate.device_id in fridge.mesh.node.membership.certs)
            await fridge.mesh.endpoint.send_quietly(
                car.mesh.certificate.device_id, Channel.REQUESTS, forged, session=car.mesh.node.session
            )
            assert await until(lambda: car.mesh.node.dropped["Forbidden"] == 1)
            assert car.mesh.node.group_epoch == 1
        assert HouseholdState(tmp_path / "car").load().group_epoch == 1


def _presence(name: str, cls: str, rate: float, root: HouseholdRoot) -> tuple[object, Presence]:
    from edge_agent.mesh.identity import DeviceIdentity

    cert = root.issue(
        DeviceIdentity.generate(),
        name=name,
        profile=cls,
        requests=[],
        serves=["generate", "embed"],
        device_class=cls,  # type: ignore[arg-type]
    )
    offers = [
        Offer(task="generate", pack="llm@int4", rate=rate, first_ms=80),
        Offer(task="embed", pack="e", rate=900, first_ms=3),
    ]
    return cert, Presence(
        certificate=cert, session="0" * 16, link=1, profile=cls, offers=offers, interval_s=5
    )


def test_router_policy_and_expected_completion_time(store: PackStore) -> None:
    from nacl.signing import SigningKey

    from edge_agent.mesh.household import Membership

    root = HouseholdRoot(SigningKey.generate())
    laptop = load_profile("laptop")
    plan = plan_for_profile(laptop, [p.manifest for p in store.list()])

    class _Endpoint:  # the router's whole view of the mesh (mesh.interfaces.PeerDirectory), faked
        def __init__(self) -> None:
            self.peers = PeerTable("me")
            self.device_id = "me"
            self.node = type("N", (), {"membership": Membership(root.key.verify_key)})()

        def known(self) -> list[object]:
            return self.peers.all()  # type: ignore[return-value]

        def is_member(self, device_id: str) -> bool:
            return device_id in self.node.membership.certs

        def own_requests(self) -> list[str]:
            return list(self.node.membership.certs["me"].requests)

    ep = _Endpoint()
    for name, cls, rate in (("hub", "hub", 230.0), ("car", "vehicle", 400.0)):
        cert, pres = _presence(name, cls, rate, root)
        ep.node.membership.add_certificate(cert)  # type: ignore[arg-type]
        ep.peers.update(cert, pres)  # type: ignore[arg-type]
        ep.peers.get(cert.device_id).rtt_ms = 1.0  # type: ignore[union-attr]
    me = root.issue(
        __import__("edge_agent.mesh.identity", fromlist=["x"]).DeviceIdentity.generate(),
        name="me",
        profile="laptop",
        requests=["generate", "embed"],
        serves=[],
    )
    ep.node.membership.certs["me"] = me
    local = {"generate": Offer(task="generate", pack="llm@int4", rate=100, first_ms=90)}
    req = GenerateRequest.from_prompt("hi", max_tokens=100)

    def decide(**policy: object):  # type: ignore[no-untyped-def]
        r = Router(
            plan=plan, policy=RouterSettings(**policy), local=object(), endpoint=ep, local_offers=local
        )  # type: ignore[arg-type]
        return r.decide("generate", req)

    d = decide()
    assert [c.name for c in d.ranked] == ["car", "hub", "this device"]  # 80+250+1 < 80+435+1 < 90+1000
    assert "rtt 1.0 ms" in d.ranked[0].detail
    assert [c.name for c in decide(peer_classes=["hub", "laptop"]).ranked] == ["hub", "this device"]
    assert decide(prefer_local=True).ranked[0].name == "this device"
    assert [c.name for c in decide(mode="local-only").ranked] == ["this device"]
    assert [c.name for c in decide(never_offload=["generate"]).ranked] == ["this device"]
    assert [c.name for c in decide(deadline_s=0.5).ranked] == ["car"]  # only the car finishes in 500 ms
    excluded = {c.name: c.excluded for c in decide(deadline_s=0.5).excluded}
    assert "deadline" in (excluded["hub"] or "")
    ep.peers.ban(d.ranked[0].peer.device_id, 15)  # type: ignore[union-attr]
    assert decide().ranked[0].name == "hub"
    assert Router(plan=plan, policy=RouterSettings(), local=None, endpoint=ep).decide(
        "embed", EmbedRequest(texts=["x"])
    ).ranked[0].name in ("hub", "car")
