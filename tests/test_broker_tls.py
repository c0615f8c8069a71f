"""`hearth broker config` on a real Mosquitto: mutual TLS, per-device ACLs, the pairing window, CRL.

The user's path end to end: `household init` and `broker config` on the hub, Mosquitto on the written
config, `household invite` + `pair` (the invitation opens the pairing listener, a Mosquitto of its own;
the device reaches the hub through it and leaves with a client certificate), offload over mutual TLS,
then what the ACLs and the CRL refuse (`household revoke` reloads Mosquitto itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import BaseModel

from benchmarks.rigs.brokers import AS_ROOT, Mosquitto, free_port, start_mosquitto
from benchmarks.rigs.meshkit import config, service
from edge_agent import processes
from edge_agent.client.schemas import GenerateRequest
from edge_agent.config import AgentConfig
from edge_agent.connect import member_client, pairing_client, pairing_tls_context
from edge_agent.mesh import topics
from edge_agent.mesh.broker_pki import BrokerPki, broker_certificate_issuer
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.pairing import (
    MAX_ATTEMPTS,
    DevicePairing,
    Invitation,
    PairChallenge,
    PairProof,
    PairWelcome,
    new_session,
)
from edge_agent.mesh.pairing_link import serve_invitation
from edge_agent.mesh.pairing_window import PairingListener, PairingWindow, open_pairing_window
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import MqttClient
from edge_agent.models.store import PackStore
from tests.support.cli import cli_env, hearth, ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass
class Site:
    tmp: Path
    env: dict[str, str]
    port: int
    pairing_port: int
    broker: Mosquitto
    conf: Path

    def toml(self, name: str, profile: str) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(
            f'[agent]\nname = "{name}"\nprofile = "{profile}"\n'
            f'[mesh]\nenabled = true\nbroker = "mqtts://localhost:{self.port}"\n'
            f'pairing_broker = "mqtts://localhost:{self.pairing_port}"\nstate_dir = "{self.tmp / name}"\n'
        )
        return path

    @property
    def hub_dir(self) -> Path:
        return self.tmp / "hub"

    @contextlib.asynccontextmanager
    async def window(self, invitation: str) -> AsyncIterator[PairingWindow]:
        """The hub's pairing listener, open for ``invitation`` (what `hearth household invite` opens)."""
        listener = PairingListener.load(self.hub_dir)
        assert listener is not None and listener.port == self.pairing_port
        hub_id = HouseholdState(self.hub_dir).identity.device_id
        async with open_pairing_window(self.hub_dir, listener, invitation, hub_id) as window:
            yield window

    def agent_config(self, name: str, profile: str) -> AgentConfig:
        cfg = config(name, self.port, profile)
        mesh = cfg.mesh.model_copy(update={"broker": f"mqtts://localhost:{self.port}"})
        return cfg.model_copy(update={"mesh": mesh})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One hub household and its Mosquitto for the module (each test uses its own client ids)."""
    tmp_path, hearth_env = tmp_path_factory.mktemp("site"), cli_env()
    port, pairing_port = free_port(), free_port()
    s = Site(tmp_path, hearth_env, port, pairing_port, None, tmp_path / "mosquitto" / "mosquitto.conf")  # type: ignore[arg-type]
    hub_toml = s.toml("hub", "hub")
    ok(hearth("household", "init", "-c", str(hub_toml), env=hearth_env))
    out = ok(hearth("broker", "config", "-c", str(hub_toml), "--out", str(tmp_path / "mosquitto"),
                    "--hostname", "localhost", "--port", str(port), "--pairing-port", str(pairing_port),
                    "--bind", "127.0.0.1", env=hearth_env))  # fmt: skip
    assert f'broker = "mqtts://localhost:{port}"' in out
    # Run on the written config itself (as root, told to stay root), so `reload_brokers` finds it.
    s.conf.write_text(AS_ROOT + s.conf.read_text())
    s.broker = start_mosquitto(s.conf, [port], tmp_path)
    try:
        yield s
    finally:
        s.broker.stop()


def pair_fridge(site: Site) -> None:
    """`hearth household invite` on the hub, `hearth pair CODE` on the fridge, as a user types them."""
    hub_toml = str(site.tmp / "hub.toml")
    args = ["household", "invite", "-c", hub_toml, "--minutes", "2", "--requests", "generate"]
    invite = subprocess.Popen([sys.executable, "-m", "edge_agent", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=site.env)  # fmt: skip
    try:
        code = None
        assert invite.stdout is not None
        for line in invite.stdout:
            if m := re.search(r"hearth pair (\d{4}-\d{4})", line):
                code = m.group(1)
                break
        assert code, "invite printed no setup code"
        fridge_toml = site.toml("fridge", "fridge-panel")
        out = ok(hearth("pair", code, "-c", str(fridge_toml), env=site.env))
        assert "joined household" in out
        rest, err = invite.communicate(timeout=30)
        assert invite.returncode == 0 and "paired 'fridge'" in rest, err
    finally:
        processes.stop(invite, timeout=5)


def hub_tls(site: Site) -> ssl.SSLContext:
    """The hub's own broker client identity (what reaches the pairing window's hub listener)."""
    return BrokerPki(site.hub_dir).tls_context()


def client_tls(state_dir: Path | None, site: Site) -> ssl.SSLContext:
    """Verify the broker against the hub's CA; present ``state_dir``'s client certificate if given."""
    ctx = ssl.create_default_context(cafile=str(site.tmp / "mosquitto" / "ca.crt"))
    if state_dir is not None:
        pki = BrokerPki(state_dir)
        ctx.load_cert_chain(pki.client_cert_path, pki.client_key_path)
    return ctx


async def connects(port: int, tls: ssl.SSLContext, client_id: str) -> bool:
    try:
        async with aiomqtt.Client("localhost", port, identifier=client_id, tls_context=tls, timeout=2):
            return True
    except aiomqtt.MqttError:
        return False


async def refused_after_reload(port: int, tls: ssl.SSLContext, client_id: str, timeout: float = 10) -> bool:
    """Whether Mosquitto refuses this client within ``timeout``: it reloads on SIGHUP in its own main
    loop, so the test polls (a deadline, not a guess of how long a reload takes)."""
    deadline = time.monotonic() + timeout
    while await connects(port, tls, client_id):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_broker_config_pairing_mutual_tls_acls_and_crl(site: Site, store: PackStore) -> None:
    pair_fridge(site)
    hub_dir, fridge_dir = site.tmp / "hub", site.tmp / "fridge"
    hub_id = HouseholdState(hub_dir).identity.device_id
    fridge_id = HouseholdState(fridge_dir).identity.device_id
    household = HouseholdState(hub_dir).load().certificate.household_id
    fridge_pki = BrokerPki(fridge_dir)
    assert fridge_pki.has_client_identity() and fridge_pki.ca_cert_path.is_file()
    for path in (fridge_pki.client_key_path, fridge_pki.client_cert_path, fridge_pki.ca_cert_path):
        assert path.stat().st_mode & 0o777 == 0o600

    # Offload over mutual TLS: the fridge's chat is served by the hub.
    hub = service(hub_dir, site.agent_config("hub", "hub"), store)
    fridge_cfg = site.agent_config("fridge", "fridge-panel")
    fridge = service(fridge_dir, fridge_cfg, store, serve=False)
    async with hub, fridge:
        await fridge.wait_for_peers("generate", 10)
        routed = fridge.router.generate(GenerateRequest.from_prompt("Say hi.", max_tokens=6))
        assert "".join([c.text async for c in routed]) and routed.served_by == "hub"

        # The ACLs, checked with the devices' own certificates (other client ids, same identities).
        hub_ctx, fridge_ctx = client_tls(hub_dir, site), client_tls(fridge_dir, site)
        async with (
            aiomqtt.Client("localhost", site.port, identifier="hub-acl", tls_context=hub_ctx) as h,
            aiomqtt.Client("localhost", site.port, identifier="fridge-acl", tls_context=fridge_ctx) as f,
        ):
            # Markers: each reader's own request inbox, which the other may write.
            to_f, to_h = (h, topics.requests(household, fridge_id)), (f, topics.requests(household, hub_id))
            assert await delivered(f, h, topics.requests(household, fridge_id), to_f)  # control: own inbox
            assert await delivered(h, f, topics.requests(household, hub_id), to_h)
            assert not await delivered(f, h, topics.requests(household, hub_id), to_f)  # another's inbox
            assert not await delivered(f, h, topics.responses(household, hub_id), to_f)
            assert not await delivered(f, h, topics.responses(household, hub_id), to_f, sub="#")
            assert not await delivered(h, f, topics.presence(household, hub_id), to_h)  # another's presence
            assert not await delivered(h, f, topics.PAIR_OPEN, to_h)  # only the hub hosts invitations
            assert not await delivered(h, f, "elsewhere/topic", to_h)  # nothing outside the household

    # No certificate, or one from another CA: the members' listener refuses the TLS handshake.
    assert not await connects(site.port, client_tls(None, site), "anon")
    stranger = site.tmp / "stranger"
    stranger_pki = BrokerPki(stranger)
    stranger_pki.create_ca("0" * 16)
    stranger_pki.issue_own_client(fridge_id, hub.mesh.certificate.expires_at)  # same CN, wrong issuer
    assert not await connects(site.port, client_tls(stranger, site), "stranger")
    assert await connects(site.port, client_tls(fridge_dir, site), "fridge-ok")

    # The household broker has no anonymous listener at all: pairing has its own, for one invitation
    # at a time (below, and tests/test_hardening_broker.py).
    conf = site.conf.read_text()
    assert conf.count("\nlistener ") == 1 and "allow_anonymous true" not in conf
    assert "hearth/pair" not in (site.tmp / "mosquitto" / "acl").read_text()

    # Revocation: the CRL the broker reads is refreshed and Mosquitto reloaded by `household revoke`
    # itself; the fridge cannot connect any more.
    crl_before = (site.tmp / "mosquitto" / "crl.pem").read_text()
    revoked = hearth("household", "revoke", fridge_id, "-c", str(site.tmp / "hub.toml"), env=site.env)
    ok(revoked)
    assert f"reloaded Mosquitto (pid {site.broker.proc.pid})" in revoked.stderr, revoked.stderr
    assert (site.tmp / "mosquitto" / "crl.pem").read_text() != crl_before
    assert await refused_after_reload(site.port, client_tls(fridge_dir, site), "fridge-revoked")
    transport = member_client(hub.config.mesh, hub_dir, "hub-after")
    async with transport:  # the hub itself still connects
        pass
    assert os.path.exists(site.tmp / "hub" / "broker-ca.key")


async def test_the_pairing_window_reaches_the_pairing_topics_only(site: Site) -> None:
    """Anonymous clients on the pairing listener: the open invitation and their own session, nothing of
    the household, and they cannot announce an invitation themselves."""
    inv, session, other = "0123456789abcdef", new_session(), new_session()
    household = HouseholdState(site.hub_dir).load().certificate.household_id
    hub_id = HouseholdState(site.hub_dir).identity.device_id
    anon = pairing_tls_context(site.agent_config("hub", "hub").mesh, "mqtts://")
    async with (
        site.window(inv) as window,
        aiomqtt.Client("localhost", site.pairing_port, identifier=session, tls_context=anon) as a,
        aiomqtt.Client("localhost", site.pairing_port, identifier=other, tls_context=anon) as b,
        aiomqtt.Client("127.0.0.1", window.hub_port, identifier="hub-acl-2", tls_context=hub_tls(site)) as h,
    ):
        # Markers: the anonymous client's own session topics (the hub writes to it, it writes to the hub).
        to_a, to_h = (h, topics.pair_to_device(inv, session)), (a, topics.pair_to_hub(inv, session))
        assert await delivered(a, h, topics.PAIR_OPEN, to_a)  # control: the open invitation is readable
        assert await delivered(h, a, topics.pair_to_hub(inv, session), to_h)
        in_household = f"hearth/{household}/#"
        assert not await delivered(a, h, topics.requests(household, hub_id), to_a, sub=in_household)
        assert not await delivered(a, h, topics.presence(household, hub_id), to_a, sub="#")
        assert not await delivered(h, a, topics.requests(household, hub_id), to_h)
        to_b = (h, topics.pair_to_device(inv, other))
        assert await delivered(b, h, topics.PAIR_OPEN, to_b)  # control: b hears the hub's announcement
        assert not await delivered(b, a, topics.PAIR_OPEN, to_b)  # an anonymous client cannot fake one


async def delivered(
    reader: aiomqtt.Client, writer: aiomqtt.Client, topic: str, marker: tuple[aiomqtt.Client, str],
    sub: str | None = None,
) -> bool:  # fmt: skip
    """Does a message ``writer`` publishes on ``topic`` reach ``reader`` (subscribed to ``sub``)?

    Decided without a timeout: once the broker has acknowledged it, a marker follows on a topic the
    marker's writer may write and the reader may read. Mosquitto handles a QoS 1 publish (ACL check,
    queueing to subscribers) before its PUBACK and sends a subscriber its messages in that order, so a
    delivered message would arrive before the marker."""
    payload, tag = os.urandom(8).hex().encode(), os.urandom(8).hex().encode()
    marker_writer, marker_topic = marker
    await reader.subscribe(sub or topic, qos=1)
    await reader.subscribe(marker_topic, qos=1)
    await writer.publish(topic, payload, qos=1)
    await marker_writer.publish(marker_topic, tag, qos=1)
    seen = False
    async with asyncio.timeout(10):  # a safety net: the marker always arrives
        async for message in reader.messages:
            seen = seen or message.payload == payload
            if message.payload == tag:
                break
    for pattern in {sub or topic, marker_topic}:
        await reader.unsubscribe(pattern)
    return seen


async def test_pairing_sessions_are_bound_to_their_mqtt_client(site: Site) -> None:
    """On the pairing listener an anonymous client reads and writes only the session named by its own
    client id: another cannot learn a session (not even via `#`), read its challenge, or speak for it."""
    inv, victim_id, other_id = "0123456789abcdef", new_session(), new_session()
    anon = pairing_tls_context(site.agent_config("hub", "hub").mesh, "mqtts://")
    async with (
        site.window(inv) as window,
        aiomqtt.Client("127.0.0.1", window.hub_port, identifier="hub-pair", tls_context=hub_tls(site)) as hub,
        aiomqtt.Client("localhost", site.pairing_port, identifier=victim_id, tls_context=anon) as victim,
        aiomqtt.Client("localhost", site.pairing_port, identifier=other_id, tls_context=anon) as other,
    ):
        to_victim, to_other = topics.pair_to_device(inv, victim_id), topics.pair_to_device(inv, other_id)
        from_victim, from_other = topics.pair_to_hub(inv, victim_id), topics.pair_to_hub(inv, other_id)
        inbox = topics.pair_hub_inbox(inv)
        # Controls: each side of a session reaches the other.
        assert await delivered(victim, hub, to_victim, marker=(hub, to_victim))
        assert await delivered(hub, victim, from_victim, marker=(victim, from_victim), sub=inbox)
        # Another anonymous client does not receive the hub's messages to the victim's session...
        assert not await delivered(other, hub, to_victim, marker=(hub, to_other))
        assert not await delivered(other, hub, to_victim, marker=(hub, to_other), sub="hearth/pair/#")
        assert not await delivered(other, hub, to_victim, marker=(hub, to_other), sub="#")
        # ... cannot write to the hub in the victim's name, or on the old unbound inbox ...
        assert not await delivered(hub, other, from_victim, marker=(other, from_other), sub=inbox)
        assert not await delivered(hub, other, f"hearth/pair/{inv}/hub", marker=(other, from_other),
                                   sub="hearth/pair/#")  # fmt: skip
        # ... nor to the victim (a fake challenge or refusal).
        assert not await delivered(victim, other, to_victim, marker=(hub, to_victim))


async def test_an_anonymous_client_cannot_disturb_a_pairing_in_progress(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The hub serves an invitation through the real broker; an attacker on the pairing listener that
    even knows the victim's session id sends hellos and forged proofs for it, between the victim's
    hello and its proof. The victim pairs, only its own hello counted, and the attacker saw nothing."""
    hub_state = HouseholdState(site.tmp / "hub")
    root, root_file = hub_state.load_root()
    inv = Invitation(root, bytes.fromhex(root_file.group_key), root_file.group_epoch,
                     issue_tls=broker_certificate_issuer(hub_state.dir))  # fmt: skip
    mesh = site.agent_config("hub", "hub").mesh
    pairing_url = f"mqtts://localhost:{site.pairing_port}"
    hub_id = hub_state.identity.device_id
    victim_id, attacker_id = new_session(), new_session()
    victim = DevicePairing(DeviceIdentity.generate(), inv.code, inv.invitation_id, session=victim_id,
                           name="fridge", profile="fridge-panel", requests=[], serves=[])  # fmt: skip
    paired: list[DeviceCertificate] = []

    def envelope(session: str, message: BaseModel) -> bytes:
        return json.dumps({"session": session, "message": message.model_dump()}).encode()

    async def from_hub(link: MqttClient) -> dict[str, Any]:
        async with asyncio.timeout(10):
            async for frame in link.frames():
                if frame.topic == topics.pair_to_device(inv.invitation_id, victim_id):
                    env: dict[str, Any] = json.loads(frame.payload)
                    assert env["refused"] is None, env
                    message: dict[str, Any] = env["message"]
                    return message
        raise AssertionError("the connection closed")

    async with (
        site.window(inv.invitation_id) as window,
        window.hub_link(f"{hub_id}-invite") as hub_link,
        pairing_client(mesh, pairing_url, session=victim_id) as victim_link,
        pairing_client(mesh, pairing_url, session=attacker_id) as attacker_link,
        aiomqtt.Client(
            "127.0.0.1", window.hub_port, identifier="hub-marker", tls_context=hub_tls(site)
        ) as marker,
    ):
        serving = asyncio.create_task(serve_invitation(hub_link, inv, paired.append, retain=False))
        await attacker_link.subscribe("hearth/pair/#")  # everything it may read
        await victim_link.subscribe(topics.PAIR_OPEN)
        async for frame in victim_link.frames():  # the announced invitation: the hub is listening
            if frame.payload:
                break
        await victim_link.subscribe(topics.pair_to_device(inv.invitation_id, victim_id))
        await victim_link.publish(topics.pair_to_hub(inv.invitation_id, victim_id),
                                  envelope(victim_id, victim.hello))  # fmt: skip
        challenge = PairChallenge.model_validate(await from_hub(victim_link))

        intruder = DevicePairing(DeviceIdentity.generate(), inv.code, inv.invitation_id, session=victim_id,
                                 name="x", profile="fridge-panel", requests=[], serves=[])  # fmt: skip
        forged = PairProof(confirm="0" * 64, sealed="00" * 60)
        in_its_name = topics.pair_to_hub(inv.invitation_id, victim_id)  # the broker's ACL refuses these
        on_its_own = topics.pair_to_hub(inv.invitation_id, attacker_id)  # the hub drops these
        for topic in (in_its_name, on_its_own):
            await attacker_link.publish(topic, envelope(victim_id, intruder.hello))
            await attacker_link.publish(topic, envelope(victim_id, forged))

        await victim_link.publish(topics.pair_to_hub(inv.invitation_id, victim_id),
                                  envelope(victim_id, victim.prove(challenge)))  # fmt: skip
        welcome = victim.finish(PairWelcome.model_validate(await from_hub(victim_link)))
        cert = await asyncio.wait_for(serving, 10)
        assert welcome.certificate == cert == paired[0]
        assert inv.attempts_left == MAX_ATTEMPTS - 1  # the victim's hello, nothing else
        # The broker never delivered the frames in the victim's name; the hub dropped the others.
        hub_log = [r.getMessage() for r in caplog.records if r.name == "edge_agent.mesh.pairing_link"]
        assert hub_log == ["dropped a pairing message for another session than its topic's"] * 2

        # What the attacker received, up to a marker the hub publishes after the welcome arrived.
        marker_topic = topics.pair_to_device(inv.invitation_id, attacker_id)
        await marker.publish(marker_topic, b"marker", qos=1)
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for frame in attacker_link.frames():
                if frame.topic == marker_topic:
                    break
                seen.append(frame.topic)
        assert set(seen) <= {topics.PAIR_OPEN}, seen  # the open invitation only
