"""Issue 21, the household broker: the pairing listener (N7), the pairing link's bounds, the broker CRL.

N7: pairing runs on a Mosquitto of its own that exists only while an invitation is open, behind a relay
that counts connections before the TLS handshake; nothing anonymous is ever retained, and its ACL names
the current invitation only. The CRL the household broker checks lives days and is renewed (and
Mosquitto reloaded) by the hub agent. Real Mosquitto 2.0.11 on free loopback ports; the pairing link's
bounds on an in-memory link. Each attack: the exact refusal, unchanged trusted state, and the hub still
pairs (or the broker still serves) afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from nacl.signing import SigningKey
from pydantic import BaseModel

from benchmarks.rigs.brokers import AS_ROOT, Mosquitto, free_port, run_mosquitto, start_mosquitto
from benchmarks.rigs.meshkit import config, provision, service
from edge_agent.errors import HearthError, TransportError
from edge_agent.mesh import topics
from edge_agent.mesh.broker import MAX_PAIRING_PACKET, PairingLimits, mosquitto_config
from edge_agent.mesh.broker_crl import CrlKeeper
from edge_agent.mesh.broker_pki import CRL_LIFETIME, BrokerPki, public_key_pem, write_public
from edge_agent.mesh.household import DeviceCertificate, HouseholdRoot
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.pairing import MAX_ATTEMPTS, DevicePairing, Invitation, PairChallenge, new_session
from edge_agent.mesh.pairing_link import (
    MAX_DEVICE_FRAME,
    DropLog,
    OpenInvitation,
    pair_with_hub,
    serve_invitation,
)
from edge_agent.mesh.pairing_window import PairingListener, PairingWindow, open_pairing_window
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import MqttClient
from edge_agent.models.store import PackStore
from edge_agent.supervision import Supervisor
from tests.support.meshsim import until

WAIT = 15.0


# -- a hub with its broker PKI (what `hearth household init` + `hearth broker config` leave) -------------


@dataclass
class Hub:
    dir: Path
    fridge_dir: Path
    out: Path

    @property
    def state(self) -> HouseholdState:
        return HouseholdState(self.dir)

    @property
    def id(self) -> str:
        return self.state.identity.device_id

    @property
    def fridge_id(self) -> str:
        return HouseholdState(self.fridge_dir).identity.device_id

    def invitation(self) -> Invitation:
        root, root_file = self.state.load_root()
        return Invitation(root, bytes.fromhex(root_file.group_key), root_file.group_epoch)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    base = tmp_path_factory.mktemp("hub")
    hub = Hub(base / "hub", base / "fridge", base / "mosquitto")
    provision(hub.dir, hub.dir, "hub", "hub")
    provision(hub.dir, hub.fridge_dir, "fridge", "fridge-panel")
    pki, cert = BrokerPki(hub.dir), hub.state.load().certificate
    pki.create_ca(cert.household_id)
    pki.issue_own_client(cert.device_id, cert.expires_at)
    fridge = BrokerPki(hub.fridge_dir)  # the fridge's client certificate, as pairing would give it
    fridge.install(pki.issue_client(hub.fridge_id, public_key_pem(fridge.client_key()), cert.expires_at),
                   pki.ca_pem())  # fmt: skip
    pki.write_crl([])
    return hub


def window_settings(**limits: object) -> PairingListener:
    return PairingListener(port=free_port(), bind="127.0.0.1", hostnames=["localhost"],
                           limits=PairingLimits.model_validate(limits))  # fmt: skip


@contextlib.asynccontextmanager
async def window(hub: Hub, invitation: str, **limits: object) -> AsyncIterator[PairingWindow]:
    async with open_pairing_window(hub.dir, window_settings(**limits), invitation, hub.id) as w:
        yield w


def anonymous_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def pairing_client(w: PairingWindow, session: str) -> MqttClient:
    return MqttClient("127.0.0.1", w.relay.port, client_id=session, tls=anonymous_tls())


def device(inv: Invitation, session: str) -> DevicePairing:
    return DevicePairing(DeviceIdentity.generate(), inv.code, inv.invitation_id, session=session,
                         name="oven", profile="fridge-panel", requests=[], serves=[])  # fmt: skip


async def pairs(w: PairingWindow, inv: Invitation) -> DeviceCertificate:
    """A new device pairs through the window while the hub serves the invitation (the hub keeps serving)."""
    session = new_session()
    async with w.hub_link(f"hub-{new_session()[:8]}") as hub_link, pairing_client(w, session) as link:
        serving = asyncio.create_task(serve_invitation(hub_link, inv, lambda c: None, retain=False))
        welcome = await pair_with_hub(link, lambda _inv, s: device(inv, s), session=session, timeout=WAIT)
        cert = await asyncio.wait_for(serving, WAIT)
    assert welcome.certificate == cert
    return cert


# -- N7: open only while an invitation is ----------------------------------------------------------------


async def test_no_pairing_listener_without_an_open_invitation(hub: Hub) -> None:
    settings = window_settings()
    with pytest.raises(ConnectionRefusedError):  # before the invitation
        await asyncio.open_connection("127.0.0.1", settings.port)
    inv = hub.invitation()
    async with open_pairing_window(hub.dir, settings, inv.invitation_id, hub.id) as w:
        assert w.relay.port == settings.port
        cert = await pairs(w, inv)  # open: a device pairs
        run_dir = Path(str(w.proc.args[2])).parent  # type: ignore[index]
        config = (run_dir / "mosquitto.conf").read_text()
        # The household broker config has no anonymous listener; this one names this invitation only.
        assert "retain_available false\n" in config and "persistence false\n" in config
        assert f"listener {settings.port}" not in config  # the relay listens, Mosquitto does not
        acl = (run_dir / "acl-pairing").read_text().splitlines()
        here = f"hearth/pair/{inv.invitation_id}"
        assert acl[1:] == ["topic read hearth/pair/open", f"pattern write {here}/hub/%c",
                           f"pattern read {here}/dev/%c"]  # fmt: skip
    with pytest.raises(ConnectionRefusedError):  # and closed after
        await asyncio.open_connection("127.0.0.1", settings.port)
    assert w.proc.poll() is not None and not run_dir.exists()
    assert cert.name == "oven" and hub.state.load().certificate.device_id == hub.id


def test_the_household_broker_has_no_anonymous_listener(tmp_path: Path) -> None:
    files = mosquitto_config(tmp_path, "f" * 16, "a" * 32, cafile=tmp_path / "ca.crt", crlfile=None,
                             certfile=tmp_path / "server.crt", keyfile=tmp_path / "server.key")  # fmt: skip
    conf = files.config.read_text()
    assert conf.count("\nlistener ") == 1 and "allow_anonymous false\n" in conf
    assert "allow_anonymous true" not in conf and "hearth/pair" not in files.member_acl.read_text()
    assert MAX_PAIRING_PACKET >= MAX_DEVICE_FRAME  # the hub's welcome fits the pairing broker's packets


async def test_anonymous_retained_messages_end_the_connection_and_nothing_is_stored(hub: Hub) -> None:
    """The old shared listener let anyone store any number of retained messages on the household broker
    (32 MiB took Mosquitto from 10 to 42 MiB). Now a retained publish ends the connection, nothing is
    kept, and the invitation is untouched."""
    inv = hub.invitation()
    inbox = topics.pair_hub_inbox(inv.invitation_id)
    async with window(hub, inv.invitation_id) as w:
        for _ in range(3):  # reconnecting does not help
            attacker = new_session()
            client = MqttClient("127.0.0.1", w.relay.port, client_id=attacker, tls=anonymous_tls(), qos=0)
            async with client:
                await client.publish(topics.pair_to_hub(inv.invitation_id, attacker), os.urandom(8192),
                                     retain=True)  # fmt: skip
                with pytest.raises(TransportError, match=f"connection to 127.0.0.1:{w.relay.port} lost"):
                    async with asyncio.timeout(WAIT):
                        await anext(client.frames())  # the broker ended the connection
        # A hub subscribing now gets nothing retained: only the marker published after it subscribed.
        marker = new_session()
        async with w.hub_link("hub-late") as late, pairing_client(w, marker) as marking:
            await late.subscribe(inbox)
            await marking.publish(topics.pair_to_hub(inv.invitation_id, marker), b"marker")
            async with asyncio.timeout(WAIT):
                first = await anext(late.frames())
        assert (first.topic, first.payload, first.retained) == (
            topics.pair_to_hub(inv.invitation_id, marker), b"marker", False)  # fmt: skip
        assert inv.attempts_left == MAX_ATTEMPTS  # trusted state unchanged
        assert (await pairs(w, inv)).name == "oven"  # and the hub still pairs a device


async def test_the_connection_limit_holds_before_the_handshake_and_after_disconnects(hub: Hub) -> None:
    """Mosquitto 2.0.11's own max_connections counts a closed connection twice: after five connect and
    close cycles it let six clients past a limit of three. The relay counts each connection when it is
    accepted (before any TLS byte) and when it ends, so the limit is the same every round."""
    inv = hub.invitation()
    async with window(hub, inv.invitation_id, max_connections=4, per_source=2) as w:
        relay = w.relay

        async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", relay.port, local_addr=(source, 0))

        async def refused(source: str, reason: str) -> None:
            before = relay.refused[reason]
            reader, writer = await connect(source)
            assert await until(lambda: relay.refused[reason] == before + 1, WAIT)
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read(1) == b""  # closed without a byte
            writer.close()

        for _ in range(3):
            held = [await connect("127.0.0.2"), await connect("127.0.0.2")]  # no TLS handshake at all
            assert await until(lambda: relay.active == 2, WAIT)
            await refused("127.0.0.2", "per-source")  # a third from the same address
            held += [await connect("127.0.0.3"), await connect("127.0.0.3")]
            assert await until(lambda: relay.active == 4, WAIT)
            await refused("127.0.0.4", "full")  # anyone else: the listener is full
            with pytest.raises((ssl.SSLError, ConnectionError)):  # nor does a TLS handshake get far
                await asyncio.open_connection("127.0.0.1", relay.port, ssl=anonymous_tls())
            for _reader, writer in held:
                writer.close()
            assert await until(lambda: relay.active == 0, WAIT)  # every slot came back, no more
        assert relay.refused == {"per-source": 3, "full": 6}
        assert inv.attempts_left == MAX_ATTEMPTS
        assert (await pairs(w, inv)).name == "oven"  # a real device still gets through


async def test_a_connection_that_sends_too_much_is_cut(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    inv = hub.invitation()
    async with window(hub, inv.invitation_id, upload_bytes=16 * 1024) as w:
        attacker = new_session()
        attacking = MqttClient("127.0.0.1", w.relay.port, client_id=attacker, tls=anonymous_tls(), qos=0)
        async with w.hub_link("hub-watch") as watch, attacking as client:
            await watch.subscribe(topics.pair_hub_inbox(inv.invitation_id))
            await client.publish(topics.pair_to_hub(inv.invitation_id, attacker), b"x" * 32 * 1024)
            with pytest.raises(TransportError, match=f"connection to 127.0.0.1:{w.relay.port} lost"):
                async with asyncio.timeout(WAIT):
                    await anext(client.frames())  # the relay cut it
            assert w.relay.refused["upload"] == 1
            marker = new_session()
            async with pairing_client(w, marker) as marking:
                await marking.publish(topics.pair_to_hub(inv.invitation_id, marker), b"marker")
                async with asyncio.timeout(WAIT):
                    first = await anext(watch.frames())
            assert first.payload == b"marker"  # the 32 KiB frame never reached the hub
        messages = [r.getMessage() for r in caplog.records if r.name == "edge_agent.mesh.pairing_window"]
        assert any(m.endswith("more than 16384 bytes sent") for m in messages), messages
        assert (await pairs(w, inv)).name == "oven"


async def test_a_pairing_window_that_cannot_listen_says_why(hub: Hub) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = PairingListener(port=port, bind="127.0.0.1", hostnames=["localhost"])
        with pytest.raises(HearthError, match=f"cannot open the pairing listener on 127.0.0.1:{port}: "):
            async with open_pairing_window(hub.dir, settings, "0123456789abcdef", hub.id):
                pass


# -- the pairing link's bounds (in memory) ---------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    topic: str
    payload: bytes
    retained: bool = False


class MemoryLink:
    """The hub's side of a pairing link: the test delivers frames; what the hub publishes is recorded."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Frame] = asyncio.Queue()
        self.published: list[tuple[str, bytes, bool]] = []
        self.replies: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))
        if topic != topics.PAIR_OPEN:
            self.replies.put_nowait((topic, payload))

    async def subscribe(self, pattern: str) -> None:
        pass

    async def frames(self) -> AsyncIterator[Frame]:
        while True:
            yield await self.inbox.get()


def envelope(session: str, message: BaseModel | dict[str, object]) -> bytes:
    body = message.model_dump() if isinstance(message, BaseModel) else message
    return json.dumps({"session": session, "message": body}).encode()


async def test_a_flood_of_junk_is_counted_not_logged_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    inv = Invitation(HouseholdRoot(SigningKey.generate()), group_key=os.urandom(32), group_epoch=1)
    link = MemoryLink()
    serving = asyncio.create_task(serve_invitation(link, inv, lambda c: None, retain=False))
    caplog.set_level(logging.WARNING, "edge_agent.mesh.pairing_link")
    junk_session = new_session()
    to_hub = topics.pair_to_hub(inv.invitation_id, junk_session)
    deep = b'{"session": "%s", "message": {"a": ' % junk_session.encode() + b"[" * 5000 + b"]" * 5000 + b"}}"
    for _ in range(300):
        link.inbox.put_nowait(Frame(to_hub, b"not json"))
        link.inbox.put_nowait(Frame(to_hub, deep))  # nested past the parser's limit: malformed, no crash
        link.inbox.put_nowait(Frame(to_hub, envelope(new_session(), {"type": "pair-hello"})))
        link.inbox.put_nowait(Frame(to_hub, b"x", retained=True))
    # Then a real device: the hub, having dropped 1200 frames, still answers it.
    victim = device(inv, new_session())
    link.inbox.put_nowait(Frame(topics.pair_to_hub(inv.invitation_id, victim.hello.session),
                                envelope(victim.hello.session, victim.hello)))  # fmt: skip
    async with asyncio.timeout(WAIT):
        topic, payload = await link.replies.get()
    assert topic == topics.pair_to_device(inv.invitation_id, victim.hello.session)
    PairChallenge.model_validate(json.loads(payload)["message"])
    assert inv.attempts_left == MAX_ATTEMPTS - 1  # only the real hello counted
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.mesh.pairing_link"]
    kinds = {
        "dropped a malformed pairing message": 600,
        "dropped a pairing message for another session than its topic's": 300,
        "dropped a retained frame on the pairing inbox": 300,
    }
    for kind in kinds:
        assert sum(line.startswith(kind) for line in lines) == DropLog.LOGGED_PER_KIND, kind
    assert lines[-1] == (
        "pairing: dropped 1140 more frames without logging them (580 a malformed pairing message, "
        "280 a pairing message for another session than its topic's, 280 a retained frame on the "
        "pairing inbox)"
    )
    # Where nothing can be retained, the hub repeats its announcement unretained, and never clears it.
    announcements = [(p, r) for t, p, r in link.published if t == topics.PAIR_OPEN]
    assert announcements and all(p and not r for p, r in announcements)


async def test_a_device_ignores_an_oversized_announcement() -> None:
    inv = Invitation(HouseholdRoot(SigningKey.generate()), group_key=os.urandom(32), group_epoch=1)

    class DeviceLink(MemoryLink):
        async def frames(self) -> AsyncIterator[Frame]:
            valid = OpenInvitation(invitation=inv.invitation_id, expires=inv.expires).model_dump_json()
            yield Frame(topics.PAIR_OPEN, valid.encode() + b" " * 2048)  # valid, but too big: ignored
            while True:
                yield await self.inbox.get()

    link, session = DeviceLink(), new_session()
    made: list[str] = []

    def make(invitation: str, s: str) -> DevicePairing:
        made.append(invitation)
        return device(inv, s)

    with pytest.raises(TimeoutError):
        await pair_with_hub(link, make, session=session, timeout=0.2)
    assert made == [] and link.published == []  # it neither built a pairing nor said anything


# -- the broker CRL: short-lived, renewed by the hub agent, reloaded into Mosquitto ------------------------


@contextlib.contextmanager
def members_broker(hub: Hub) -> Iterator[Mosquitto]:
    """The household Mosquitto on the config `hearth broker config` would write, started on that file
    itself (so `reload_brokers` finds it), with the hub's current CRL."""
    pki, port = BrokerPki(hub.dir), free_port()
    hub.out.mkdir(exist_ok=True)
    cafile, certfile, keyfile, crlfile = (
        hub.out / n for n in ("ca.crt", "server.crt", "server.key", "crl.pem")
    )
    write_public(cafile, pki.ca_pem())
    pki.issue_server(["localhost", "127.0.0.1"], certfile, keyfile)
    pki.publish_crl(crlfile)
    files = mosquitto_config(hub.out, hub.state.load().certificate.household_id, hub.id, cafile=cafile,
                             certfile=certfile, keyfile=keyfile, crlfile=crlfile, port=port,
                             bind="127.0.0.1")  # fmt: skip
    files.config.write_text(AS_ROOT + files.config.read_text())
    pki.record_broker(files.config)
    broker = start_mosquitto(files.config, [port], hub.out)
    try:
        yield broker
    finally:
        broker.stop()


async def connects(port: int, state_dir: Path) -> bool:
    """Whether Mosquitto accepts this member: an MQTT CONNECT over its TLS identity gets a CONNACK
    (accepted), or a TLS alert or a closed connection (refused: its certificate, or the CRL)."""
    client_id = new_session().encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    tls = BrokerPki(state_dir).tls_context()
    try:
        reader, writer = await asyncio.open_connection("localhost", port, ssl=tls)
    except (ssl.SSLError, ConnectionError):
        return False
    try:
        writer.write(bytes([0x10, len(body)]) + body)
        return await reader.readexactly(4) == b"\x20\x02\x00\x00"
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def decided(port: int, state_dir: Path, want: bool) -> bool:
    """Poll until a member's connection gives ``want`` (Mosquitto reloads in its own main loop)."""

    async def check() -> bool:
        return await connects(port, state_dir) == want

    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
    return True


async def test_an_expired_crl_is_renewed_by_the_hub_agent_and_revocation_reaches_the_broker(hub: Hub) -> None:
    """Mosquitto refuses every member while its CRL is expired (the risk of a short-lived CRL); the
    hub agent's keeper signs a new one and reloads Mosquitto, and members are back; a revocation then
    reaches the broker at the next reload."""
    pki = BrokerPki(hub.dir)
    pki.write_crl([], now=datetime.now(UTC) - CRL_LIFETIME - timedelta(days=1))  # expired yesterday
    with members_broker(hub) as broker:
        await _renewal_and_revocation(hub, pki, broker)


async def _renewal_and_revocation(hub: Hub, pki: BrokerPki, members_broker: Mosquitto) -> None:
    assert not await connects(members_broker.port, hub.dir)  # everyone refused
    supervisor = Supervisor()
    keeper = CrlKeeper(hub.dir, lambda: hub.state.load().crl.revoked, supervisor=supervisor)
    result = keeper.check()
    assert result is not None and result.reloaded == [members_broker.proc.pid] and result.failed == []
    assert await decided(members_broker.port, hub.dir, want=True)
    assert await connects(members_broker.port, hub.fridge_dir)
    assert keeper.check() is None and supervisor.drops("broker-crl") == {}  # fresh: nothing to do
    # Revocation, as `hearth household revoke` does it: a new CRL, then a reload.
    hub.state.revoke([hub.fridge_id])
    assert pki.reload_brokers().reloaded == [members_broker.proc.pid]
    assert await decided(members_broker.port, hub.fridge_dir, want=False)
    assert await connects(members_broker.port, hub.dir)  # the hub is still served


def test_the_crl_lives_days_and_is_renewed_before_it_runs_out(tmp_path: Path) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    pki = BrokerPki(tmp_path / "hub")
    pki.create_ca("0" * 16)
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    pki.write_crl([], now=t0)
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.next_update_utc == t0 + CRL_LIFETIME  # days, not 10 years
    clock = [t0 + timedelta(days=2)]
    supervisor = Supervisor()
    keeper = CrlKeeper(pki.dir, lambda: [], supervisor=supervisor, clock=lambda: clock[0])
    assert not pki.crl_due(clock[0]) and keeper.check() is None
    clock[0] = t0 + timedelta(days=3, hours=1)  # within 4 days of expiry: renewed
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    result = keeper.check()
    renewed = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert renewed.next_update_utc == clock[0] + CRL_LIFETIME and keeper.renewals == 1
    assert renewed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    # No Mosquitto runs on this hub's config: the renewal is done, the failed reload is counted and said.
    assert result is not None and result.reloaded == [] and result.describe() == (
        "no running Mosquitto started on this hub's config was found")  # fmt: skip
    assert supervisor.drops("broker-crl") == {"not reloaded": 1}
    assert supervisor.report().loops[0].last_error.startswith("NotReloadedError: signed a new broker CRL")


async def test_the_serving_hub_agent_renews_a_due_crl_by_itself(tmp_path: Path, store: PackStore) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    pki = BrokerPki(tmp_path / "hub")
    pki.create_ca("0" * 16)
    pki.write_crl([], now=datetime.now(UTC) - CRL_LIFETIME + timedelta(days=1))  # a day left: due
    assert pki.crl_due()
    with run_mosquitto(tmp_path / "mq") as broker:
        cfg = config("hub", broker.port, "hub")
        cfg = cfg.model_copy(update={"mesh": cfg.mesh.model_copy(update={"self_benchmark": False})})
        async with service(tmp_path / "hub", cfg, store) as hub:
            # Renewed at start; no Mosquitto runs on a config `hearth broker config` wrote here, so the
            # reload is counted in the agent's health as not done.
            assert await until(lambda: hub.supervisor.drops("broker-crl") == {"not reloaded": 1}, WAIT)
            assert not pki.crl_due()
            loops = {loop.name: loop for loop in hub.supervisor.report().loops}
            assert loops["broker-crl"].state == "running" and loops["broker-crl"].restarts == 0
