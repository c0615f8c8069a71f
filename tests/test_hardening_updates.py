"""Hardening 2, model updates and direct links (issue 21: N1, N4, N5, N14, the CRL learned from a peer,
pack_check's walk, supervision of the updater and the direct-link server).

Each attack asserts the exact refusal, that trusted state (update trust, unverified claims, holdings,
membership, links served) is unchanged, and that the device keeps serving: its presence still carries
its own update entries, a peer still answers it, its loops were never restarted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import blake3
import numpy as np
import onnx
import pytest
from nacl.signing import SigningKey
from onnx import helper, numpy_helper
from pydantic import ValidationError

import edge_agent.service as service_module
from benchmarks.rigs.meshkit import config
from edge_agent.errors import (
    DirectLinkError,
    DirectRefusedError,
    MalformedUpdateError,
    NotAMemberError,
    UnsafePackError,
)
from edge_agent.hearth import agent_router
from edge_agent.mesh.direct import Ask, DirectLinks, local_network, usable_hosts
from edge_agent.mesh.envelope import seal as seal_frame
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Address, Channel
from edge_agent.mesh.protocol import (
    ChunkData,
    DirectContact,
    HeldUpdate,
    UpdateHoldings,
    UpdateQuery,
    encode,
)
from edge_agent.mesh.settings import DirectLimits, MeshLimits
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.models.selection import Plan
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.service import MeshService
from edge_agent.supervision import Supervisor
from edge_agent.sync import pack_check
from edge_agent.sync.digests import merkle_root
from edge_agent.sync.exchange import UpdateExchange
from edge_agent.sync.holdings import UnverifiedClaim, holdings_parts
from edge_agent.sync.keys import UpdateKey, UpdateKeySet, sign_key_set
from edge_agent.sync.limits import (
    KEY_SET_CHARS,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_ENVELOPE_BYTES,
    MIN_FRAME_BYTES,
    UPDATE_PAYLOAD_BYTES,
)
from edge_agent.sync.manifest import MANIFEST_TYPE, HealthCheck, ManifestFile, UpdateManifest
from edge_agent.sync.pack_check import check_pack_dir, external_data_locations
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.signing import seal
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.swarm import FetchState, encode_bitfield
from edge_agent.tasks import TASKS, DeviceClass
from edge_agent.updates.ports import DeviceFacts, UpdateSettings
from edge_agent.updates.updater import Updater
from tests.support.meshsim import Device, SimHousehold, household, presence_of, until
from tests.test_update_exchange import FILES, announced, exchange, publish, same_files


@contextlib.asynccontextmanager
async def open_direct(
    dev: Device, ex: UpdateExchange, limits: DirectLimits | None = None
) -> AsyncIterator[DirectLinks]:
    """``dev``'s direct links on loopback, announced in its presence, with ``limits`` if given."""
    async with DirectLinks(dev.node, ex.serve_direct, host="127.0.0.1", limits=limits) as links:
        ex.direct, dev.direct = links, links.contact
        yield links


# -- a real MeshService (and Updater) on the in-memory mesh -------------------------------------------


def member_state(home: SimHousehold, tmp: Path, name: str) -> Path:
    """A device's mesh state on disk, certified by the simulated household's root (as pairing leaves
    it). Made before the simulated devices, so their memberships know its certificate."""
    state_dir = tmp / f"{name}-state"
    state = HouseholdState(state_dir)
    cert = home.root.issue(state.identity, name=name, profile="hub", requests=list(TASKS), serves=[])
    peers = list(home.certs)
    home.certs.append(cert)
    state.save(
        HouseholdFile(
            root_key=bytes(home.root.key.verify_key).hex(), certificate=cert, crl=home.root.crl,
            group_key=home.group.hex(), group_epoch=0, peers=peers,
        )
    )  # fmt: skip
    return state_dir


def mesh_service(home: SimHousehold, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> MeshService:
    """The product's MeshService for that state, its connector the simulator's (a one-shot member)."""
    monkeypatch.setattr(
        service_module, "household_connector", lambda *_, device, **__: home.sim.connector(device)
    )
    plan = Plan(profile_id="hub", budget_mb=0)
    cfg = config("fridge", 1883, "hub")
    route = agent_router(cfg, plan, None)
    return MeshService(cfg, load_profile("hub"), plan, state_dir, serve=False, router=route)


@contextlib.asynccontextmanager
async def running(svc: MeshService, *peers: Device) -> AsyncIterator[MeshService]:
    async with svc:
        assert await svc.endpoint.wait_until(lambda: all(svc.endpoint.peers.get(p.id) for p in peers), 5)
        yield svc


def update_key_set(home: SimHousehold, *keys: SigningKey) -> bytes:
    now = datetime.now(UTC)
    key_set = UpdateKeySet(
        household_id=home.root.household_id, version=1, threshold=1,
        keys=[UpdateKey.of(k.verify_key, f"key-{i}") for i, k in enumerate(keys)],
        issued_at=now, expires_at=now + timedelta(days=30),
    )  # fmt: skip
    return sign_key_set(key_set, home.root.key)


@contextlib.asynccontextmanager
async def updater_for(
    svc: MeshService, tmp: Path, supervisor: Supervisor | None = None
) -> AsyncIterator[Updater]:
    """The updater as the agent assembles it (sharing the agent's supervisor, feeding its presence)."""
    updater = Updater(
        svc.endpoint, PackStore(tmp / "fridge-packs"),
        device=DeviceFacts.of(svc.state, svc.membership, svc.certificate), plan=svc.plan,
        settings=UpdateSettings(interval_s=3600), busy=svc.inference_busy,
        supervisor=supervisor or svc.supervisor,
    )  # fmt: skip
    async with updater:
        yield updater


def _finished(updater: Updater, n: int) -> Callable[[], bool]:
    return lambda: updater.rounds >= n


async def rounds(updater: Updater, n: int) -> None:
    """Run the updater's supervised loop until it finished ``n`` rounds (the first at start, then
    woken), then stop it."""
    task = asyncio.create_task(updater.run_forever())
    try:
        for i in range(1, n + 1):
            assert await until(_finished(updater, i), 10), f"round {i} never finished"
            updater._wake.set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def answers_holdings_with(mallory: Device, payloads: list[bytes]) -> None:
    """``mallory`` answers every holdings query with these payloads, as *unsigned* manifests."""

    def answer(requester: DeviceCertificate, query: UpdateQuery) -> None:
        held = [
            HeldUpdate(manifest=base64.b64encode(seal(MANIFEST_TYPE, p, [])).decode(), have="")
            for p in payloads
        ]
        reply = UpdateHoldings(nonce=query.nonce, held=held)
        mallory.endpoint.send_soon(requester.device_id, Channel.RESPONSES, reply, session=query.reply_session)

    mallory.endpoint.register(UpdateQuery, answer)


# -- N1: an unsigned offer named "Evil Name!" ------------------------------------------------------------

EVIL = [
    b'{"name": "Evil Name!", "sequence": 5}',  # no verified manifest may carry that name
    b'{"name": "demo", "sequence": 1' + b"0" * 400 + b"}",  # nor a sequence beyond 2**53
    b'{"name": "demo", "sequence": 1e400}',  # a float (inf to json): int() of it raised OverflowError
]


async def test_n1_unsigned_offers_are_refused_where_parsed_and_presence_keeps_its_own_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with household(tmp_path) as home:
        state_dir = member_state(home, tmp_path, "fridge")
        UpdateStore(state_dir).installed_path.write_text('{"demo": 1}')
        hub, mallory = home.device("hub", device_class="hub"), home.device("mallory")
        await home.start(hub, mallory)
        exchange(home, hub, tmp_path)  # the hub answers holdings queries (it holds nothing)
        answers_holdings_with(mallory, EVIL)
        svc = mesh_service(home, state_dir, monkeypatch)
        async with running(svc, hub, mallory), updater_for(svc, tmp_path) as updater:
            updater.trusted.update_key_set(update_key_set(home, SigningKey.generate()))
            own = svc.presence().updates
            assert [(u.name, u.installed, u.state) for u in own] == [("demo", 1, "current")]
            trusted = (dict(updater.trusted.installed), updater.trusted.key_set)
            claims, held = dict(updater.exchange.unverifiable), dict(updater.exchange.holdings)
            dropped = Counter(svc.endpoint.dropped)
            caplog.set_level(logging.INFO, logger="edge_agent.sync.holdings")

            await rounds(updater, 2)  # two full rounds: the loop goes on after the attack

            # The exact refusals: unsigned (not fetched), and the claim unreadable (not kept).
            refused = f"not fetching an update {mallory.id[:8]} holds: manifest is not signed"
            assert [r.getMessage() for r in caplog.records].count(refused) == 2 * len(EVIL)
            gained = Counter(svc.endpoint.dropped) - dropped
            assert gained == {"UnsignedUpdateError": 2 * len(EVIL), "UnreadableUpdateClaim": 2 * len(EVIL)}
            with pytest.raises(ValidationError, match="String should match pattern"):
                UnverifiedClaim.model_validate_json(EVIL[0])
            with pytest.raises(ValidationError, match="less than or equal to 9007199254740992"):
                UnverifiedClaim.model_validate_json(EVIL[1])
            with pytest.raises(ValidationError, match="Input should be a valid integer"):
                UnverifiedClaim.model_validate_json(EVIL[2])
            # Trusted state unchanged; nothing kept to show.
            assert (dict(updater.trusted.installed), updater.trusted.key_set) == trusted
            assert updater.exchange.unverifiable == claims == {}
            assert updater.exchange.holdings == held
            # Still serving: its presence carries its own update entries (built whole, not left out
            # by the presence fallback), no loop restarted, a peer answers it.
            assert svc.presence().updates == own
            assert svc.supervisor.drops("mesh-presence") == Counter()
            assert svc.supervisor.restarts("model-updates") == 0
            assert svc.supervisor.drops("model-updates") == Counter()
            peer = svc.endpoint.peers.get(hub.id)
            assert peer is not None and await svc.endpoint.ping(peer) is not None


async def test_n1_status_builds_each_row_alone_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that do not validate (an older build's installed.json, an entry a bug let in) are left out
    and counted; the device's other rows still go out."""
    async with household(tmp_path) as home:
        state_dir = member_state(home, tmp_path, "fridge")
        UpdateStore(state_dir).installed_path.write_text('{"demo": 1, "Bad Name": 3}')
        hub = home.device("hub", device_class="hub")
        await home.start(hub)
        svc = mesh_service(home, state_dir, monkeypatch)
        async with running(svc, hub), updater_for(svc, tmp_path) as updater:
            updater.awaiting["Evil Name!"] = 7
            updates = svc.presence().updates
            assert [(u.name, u.installed, u.state) for u in updates] == [("demo", 1, "current")]
            assert svc.supervisor.drops("model-updates") == Counter({"UpdateStatus": 2})
            [loop] = [h for h in svc.supervisor.report().loops if h.name == "model-updates"]
            assert "String should match pattern '^[a-z0-9][a-z0-9._-]{1,80}$'" in loop.last_error
            assert svc.supervisor.drops("mesh-presence") == Counter()  # the fallback was not needed
            assert updater.awaiting == {"Evil Name!": 7}  # shown nowhere, changed in nothing
            assert updater.trusted.installed == {"demo": 1, "Bad Name": 3}


async def test_a_round_that_fails_unexpectedly_restarts_the_update_loop_which_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with household(tmp_path) as home:
        state_dir = member_state(home, tmp_path, "fridge")
        hub = home.device("hub", device_class="hub")
        await home.start(hub)
        exchange(home, hub, tmp_path)
        svc = mesh_service(home, state_dir, monkeypatch)
        supervisor = Supervisor(initial_backoff_s=0.0)
        async with running(svc, hub), updater_for(svc, tmp_path, supervisor) as updater:
            real, calls = updater.exchange.discover, [0]

            async def discover_once_broken(timeout: float = 2.0) -> Any:
                calls[0] += 1
                if calls[0] == 1:
                    raise ZeroDivisionError("a bug a peer found")
                return await real(timeout)

            monkeypatch.setattr(updater.exchange, "discover", discover_once_broken)
            await rounds(updater, 2)
            assert supervisor.restarts("model-updates") == 1 and calls[0] == 3
            [loop] = [h for h in supervisor.report().loops if h.name == "model-updates"]
            assert loop.last_error == "ZeroDivisionError: a bug a peer found"


# -- N4: direct contacts pointing anywhere ---------------------------------------------------------------


def contact(*hosts: str, port: int = 40000) -> DirectContact:
    return DirectContact(hosts=list(hosts), port=port, tls_sha256="a" * 64)


def test_n4_only_ip_literals_on_our_own_network_and_unprivileged_ports_are_tried() -> None:
    lan = ipaddress.ip_network("192.168.1.0/24")
    assert usable_hosts(contact("192.168.1.20", "fd00::1"), lan) == ["192.168.1.20"]
    for refused in ("deadbeef", "cafe.bad", "10.0.0.1", "192.168.2.20", "192.168.1.0", "192.168.1.255",
                    "127.0.0.1", "::1", "0.0.0.0", "224.0.0.1"):  # fmt: skip
        assert usable_hosts(contact(refused), lan) == [], refused
    assert usable_hosts(contact("192.168.1.20", port=22), lan) == []  # ssh, a router's admin page, ...
    assert usable_hosts(contact("192.168.1.20"), None) == []  # our own network unknown: nobody
    assert local_network("127.0.0.1") == ipaddress.ip_network("127.0.0.0/8")
    assert usable_hosts(contact("127.0.0.1"), local_network("127.0.0.1")) == ["127.0.0.1"]
    assert local_network("192.168.1.7").prefixlen >= 16 and local_network("fd00::7").prefixlen >= 48


async def test_n4_a_member_naming_hosts_off_our_network_makes_nobody_connect_or_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", device_class="hub"), home.device("fridge")
        await home.start(hub, fridge)
        ex_hub, ex_fridge = exchange(home, hub, tmp_path), exchange(home, fridge, tmp_path)
        tried: list[tuple[Any, ...]] = []
        real_open = asyncio.open_connection

        async def recording(*args: Any, **kwargs: Any) -> Any:
            tried.append(args)
            return await real_open(*args, **kwargs)

        monkeypatch.setattr(asyncio, "open_connection", recording)  # mesh.direct connects with it
        async with open_direct(fridge, ex_fridge) as links:
            # The hub's presence sends fetchers to a name and to an internal address of its choosing.
            hub.direct = contact("deadbeef", "10.255.255.1", port=8080)
            await announced(home, hub)
            publish(home, ex_hub, tmp_path)
            unreachable = dict(links.client.unreachable)
            found = await ex_fridge.discover(timeout=15)
            [(manifest, envelope, holders)] = found.values()
            fetch, staging = await ex_fridge.fetch(manifest, envelope, holders, rediscover_s=0.2)
            assert fetch.state is FetchState.DONE and same_files(staging)
            assert tried == []  # nothing resolved, nothing connected to
            assert not links.reachable(hub.id, hub.direct)
            assert ex_fridge.received == {"broker": sum(len(v) for v in FILES.values())}
            assert links.client.unreachable == unreachable and links.links == {}


async def test_n4_a_holder_whose_contact_times_out_is_tried_ever_less(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", device_class="hub"), home.device("fridge")
        await home.start(hub, fridge)
        ex_fridge = exchange(home, fridge, tmp_path)
        accepted: list[asyncio.StreamWriter] = []
        silent = await asyncio.start_server(  # accepts, never speaks
            lambda _, writer: accepted.append(writer), "127.0.0.1", 0
        )
        port = silent.sockets[0].getsockname()[1]
        try:
            async with open_direct(fridge, ex_fridge, DirectLimits(handshake_s=0.2)) as links:
                silent_contact = contact("127.0.0.1", port=port)
                ask = Ask(id=1, content_id="0" * 16, index=0)
                waits = []
                for attempt in (1, 2, 3):
                    with pytest.raises(DirectLinkError, match=r"127\.0\.0\.1: no link within 0\.2 s"):
                        await links.ask(hub.id, silent_contact, ask, max_length=100)
                    assert fridge.node.dropped["DirectConnectTimeout"] == attempt
                    assert not links.reachable(hub.id, silent_contact)
                    waits.append(round(links.client.unreachable[hub.id] - time.monotonic()))
                    links.client.unreachable[hub.id] = 0.0  # as if that long had passed
                assert waits == [60, 120, 240]
                assert links.links == {}
        finally:
            silent.close()
            for writer in accepted:
                writer.close()
            await silent.wait_closed()


# -- N5: the direct-link server's slots and descriptors ----------------------------------------------------


async def _half_open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection that never starts its TLS handshake."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(5):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def test_n5_connections_are_bounded_before_the_handshake_per_source_and_in_all(tmp_path: Path) -> None:
    limits = DirectLimits(handshake_s=60.0)  # no slot frees itself during the test
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        ask = Ask(id=1, content_id=manifest.content_id, index=0)
        async with open_direct(hub, ex_hub, limits) as links, open_direct(car, ex_car, limits) as car_links:
            assert links.contact is not None and links.server is not None
            server = links.server
            port = links.contact.port
            held: list[asyncio.StreamWriter] = []
            try:
                for _ in range(limits.max_pending_per_source):  # one LAN host takes its share...
                    held.append((await _half_open(port, "127.0.0.2"))[1])
                assert await until(lambda: server.pending["127.0.0.2"] == limits.max_pending_per_source)
                reader, writer = await _half_open(port, "127.0.0.2")  # ...and no more
                assert await _closed_by_server(reader)
                writer.close()
                assert hub.node.dropped["DirectLinkFlood"] == 1
                # A member elsewhere is served meanwhile.
                size = manifest.chunk_length(0)
                assert len(await car_links.ask(hub.id, links.contact, ask, max_length=size)) == size
                # Other sources fill what is left of the pending slots; then everyone waits.
                for i in range(3, 3 + limits.max_pending // limits.max_pending_per_source - 1):
                    for _ in range(limits.max_pending_per_source):
                        held.append((await _half_open(port, f"127.0.0.{i}"))[1])
                assert await until(lambda: sum(server.pending.values()) == limits.max_pending)
                reader, writer = await _half_open(port, "127.0.0.100")
                assert await _closed_by_server(reader)
                writer.close()
                assert hub.node.dropped["DirectLinkFlood"] == 2
                assert sum(server.pending.values()) == limits.max_pending  # bounded: nothing more held
                assert [d for d, _ in server.served.values() if d] == [car.id]  # trusted links unchanged
            finally:
                for w in held:
                    w.close()
            assert await until(lambda: not server.pending)
            # The existing link kept serving throughout, and still does; nothing failed unexpectedly.
            assert len(await car_links.ask(hub.id, links.contact, ask, max_length=size)) == size
            assert links.supervisor.report().dropped == 0


async def test_n5_a_handshake_not_finished_in_time_is_closed_and_counted(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", device_class="hub")
        await home.start(hub)
        ex_hub = exchange(home, hub, tmp_path)
        async with open_direct(hub, ex_hub, DirectLimits(handshake_s=0.2)) as links:
            assert links.contact is not None and links.server is not None
            reader, writer = await _half_open(links.contact.port, "127.0.0.2")
            assert await _closed_by_server(reader)
            writer.close()
            assert await until(lambda: hub.node.dropped["DirectLinkRefused"] == 1)
            assert not links.server.pending and links.server.served == {}


async def test_an_ask_that_fails_unexpectedly_is_refused_and_the_link_goes_on(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        serve = ex_hub.serve_direct

        async def buggy(requester: str, ask: Ask) -> bytes:
            if ask.index == 0:
                raise KeyError("a bug")
            return await serve(requester, ask)

        supervisor = Supervisor()
        async with DirectLinks(hub.node, buggy, host="127.0.0.1", supervisor=supervisor) as links, \
                open_direct(car, ex_car) as car_links:  # fmt: skip
            assert links.contact is not None
            with pytest.raises(DirectRefusedError, match="said: internal error"):
                await car_links.ask(hub.id, links.contact, Ask(id=1, content_id=manifest.content_id,
                                    index=0), max_length=manifest.chunk_length(0))  # fmt: skip
            data = await car_links.ask(hub.id, links.contact, Ask(id=2, content_id=manifest.content_id,
                                       index=1), max_length=manifest.chunk_length(1))  # fmt: skip
            assert len(data) == manifest.chunk_length(1)
            assert supervisor.drops("direct-links") == Counter({"KeyError": 1})
            assert links.server is not None
            assert len(car_links.links) == 1 and len(links.server.served) == 1  # the same link, still up


# -- N14: chunk sizes the wire refuses ---------------------------------------------------------------------


def test_n14_chunk_sizes_are_bounded_where_manifests_are_made(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edge_agent.cli.models import app

    pack = tmp_path / "pack"
    pack.mkdir()
    for name, data in FILES.items():
        (pack / name).write_bytes(data)
    now = datetime.now(UTC)
    with pytest.raises(MalformedUpdateError) as refused:
        build_manifest(
            pack, list(FILES), household_id="0" * 16, name="demo", pack_id="demo@int8", task="embed",
            sequence=2, device_classes=["hub"], issued_at=now, expires_at=now + timedelta(days=7),
            chunk_size=1 << 20,
        )  # fmt: skip
    assert str(refused.value) == (
        "cannot publish demo@int8: chunk_size: Input should be less than or equal to 262144"
    )
    result = CliRunner().invoke(app, ["publish", "demo@int8", "--sequence", "2", "--chunk-kib", "1024"])
    assert result.exit_code == 2
    assert "Invalid value for '--chunk-kib': Input should be less than or equal to 256" in result.output
    with pytest.raises(ValidationError, match=f"greater than or equal to {MIN_FRAME_BYTES}"):
        MeshLimits(max_frame_bytes=MIN_FRAME_BYTES - 1)


def fullest_manifest(household_id: str, name: str) -> UpdateManifest:
    """The largest manifest that validates: the biggest chunks, as many as fit, 64 files with the
    longest paths, a health check and publisher that JSON escapes six-fold (``name``: 5 characters)."""
    assert len(name) == 5
    return _build_fullest(household_id, name, _fullest_count())


_NOW = datetime.now(UTC).replace(microsecond=123456)  # a fixed width in JSON


def _build_fullest(household_id: str, name: str, n: int) -> UpdateManifest:
    health = HealthCheck(input="\u00e9" * 2000, expect="\u00e9" * 8000, pair="en-pt")
    per, extra = divmod(n, 64)
    files = [ManifestFile(path=f"{i:02d}/" + "p" * 197, size=(per + (i < extra)) * MAX_CHUNK,
                          digest="0" * 64) for i in range(64)]  # fmt: skip
    chunks = [blake3.blake3(i.to_bytes(4, "big")).hexdigest() for i in range(n)]
    return UpdateManifest(
        household_id=household_id, name=name, pack_id=f"{name}@int8", task="embed",
        device_classes=list(get_args(DeviceClass)), sequence=2, issued_at=_NOW,
        expires_at=_NOW + timedelta(days=7), chunk_size=MAX_CHUNK, total_size=n * MAX_CHUNK,
        files=files, chunks=chunks, merkle_root=merkle_root([bytes.fromhex(c) for c in chunks]).hex(),
        health=health, publisher="\u00e9" * 64,
    )  # fmt: skip


@functools.cache
def _fullest_count() -> int:
    """How many chunks the fullest manifest lists (a binary search on what validates)."""
    low, high = 1, MAX_CHUNKS + 1  # low validates, high does not
    while high - low > 1:
        mid = (low + high) // 2
        try:
            _build_fullest("0" * 16, "big-x", mid)
            low = mid
        except ValidationError:
            high = mid
    size = len(_build_fullest("0" * 16, "big-x", low).canonical())
    assert MAX_MANIFEST_BYTES - 100 < size <= MAX_MANIFEST_BYTES
    return low


SIXTEEN = [SigningKey.generate() for _ in range(16)]


def test_n14_the_largest_valid_update_messages_fit_the_smallest_frame(tmp_path: Path) -> None:
    manifest = fullest_manifest("0" * 16, "big-x")
    envelope = sign_manifest(manifest, *SIXTEEN)  # the most signatures an envelope may carry
    assert len(envelope) <= MAX_MANIFEST_ENVELOPE_BYTES
    held = HeldUpdate(
        manifest=base64.b64encode(envelope).decode(),
        have=encode_bitfield(range(len(manifest.chunks)), len(manifest.chunks)),
    )
    key_set = "A" * KEY_SET_CHARS  # the largest key set a holdings answer may carry
    parts = holdings_parts(2**62 - 1, key_set, [held] * 8)
    assert [len(p.held) for p in parts] == [0] + [1] * 8 and [p.more for p in parts] == [True] * 8 + [False]
    chunk = ChunkData(nonce=2**62 - 1, content_id="f" * 16, index=1 << 20,
                      data=base64.b64encode(bytes(MAX_CHUNK)).decode())  # fmt: skip
    home = SimHousehold(tmp_path)
    a, b = home.device("a"), home.device("b")
    for msg in [*parts, chunk]:
        assert len(encode(msg)) <= UPDATE_PAYLOAD_BYTES
        for bucket in (1, 256, 4096, 65536):
            frame = seal_frame(
                a.identity, topic="t" * 512, counter=1, payload=encode(msg, bucket), recipient=b.certificate
            )
            assert len(frame) <= MIN_FRAME_BYTES, (type(msg).__name__, bucket, len(frame))


def _hold_fullest(home: SimHousehold, hub_ex: UpdateExchange, names: list[str], tmp: Path) -> bytes:
    key_set = update_key_set(home, *SIXTEEN)
    hub_ex.trusted.update_key_set(key_set)
    hub_ex.store.save_key_set(key_set)
    for name in names:
        manifest = fullest_manifest(home.root.household_id, name)
        hub_ex.hold(manifest, sign_manifest(manifest, *SIXTEEN), tmp)
    return key_set


async def test_n14_an_answer_too_large_for_one_frame_arrives_in_parts(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", device_class="hub"), home.device("fridge")
        await home.start(hub, fridge)
        ex_hub, ex_fridge = exchange(home, hub, tmp_path), exchange(home, fridge, tmp_path)
        key_set = _hold_fullest(home, ex_hub, ["big-a", "big-b", "big-c"], tmp_path)
        # Building those manifests held the loop: the hub's advert is heard again before asking it.
        since = time.monotonic()
        assert await fridge.endpoint.wait_for_presence(hub.id, 5, since)
        dropped = Counter(fridge.node.dropped)
        found = await ex_fridge.discover(timeout=15)
        assert sorted(m.name for m, _, _ in found.values()) == ["big-a", "big-b", "big-c"]
        assert all(set(holders) == {hub.id} for _, _, holders in found.values())
        assert ex_fridge.store.key_set_path.read_bytes() == key_set  # learned from the first part
        assert Counter(fridge.node.dropped) == dropped  # no frame was too large


async def test_n14_a_pack_in_the_largest_chunks_travels_through_the_broker(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", device_class="hub"), home.device("fridge")
        await home.start(hub, fridge)
        ex_hub, ex_fridge = exchange(home, hub, tmp_path), exchange(home, fridge, tmp_path)
        key = SigningKey.generate()
        key_set = update_key_set(home, key)
        ex_hub.trusted.update_key_set(key_set)
        ex_hub.store.save_key_set(key_set)
        pack = tmp_path / "published"
        pack.mkdir()
        for name, data in FILES.items():
            (pack / name).write_bytes(data)
        now = datetime.now(UTC)
        manifest = build_manifest(
            pack, list(FILES), household_id=home.root.household_id, name="demo", pack_id="demo@int8",
            task="embed", sequence=2, device_classes=["appliance"], issued_at=now,
            expires_at=now + timedelta(days=7), chunk_size=MAX_CHUNK,
        )  # fmt: skip
        assert max(manifest.chunk_length(i) for i in range(len(manifest.chunks))) == MAX_CHUNK
        ex_hub.hold(manifest, sign_manifest(manifest, key), pack)
        found = await ex_fridge.discover(timeout=15)
        [(got, envelope, holders)] = found.values()
        fetch, staging = await ex_fridge.fetch(got, envelope, holders, rediscover_s=0.2)
        assert fetch.state is FetchState.DONE and same_files(staging)
        assert ex_fridge.received == {"broker": manifest.total_size}
        assert hub.endpoint.supervisor.report().dropped == 0  # the seeder sent every chunk it was asked


# -- still open from the last review: a CRL learned from a peer, then the agent is killed ------------------


def _advert(dev: Device, payload: bytes) -> bytes:
    board = Address(dev.node.household, dev.id, Channel.PRESENCE)
    return seal_frame(dev.identity, topic=str(board), counter=dev.node.counter.next(), payload=payload,
                      group_key=dev.node.group.key, epoch=dev.node.group.epoch)  # fmt: skip


async def test_a_crl_learned_from_a_peer_is_saved_at_once_and_survives_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with household(tmp_path) as home:
        state_dir = member_state(home, tmp_path, "fridge")
        hub, mallory = home.device("hub", device_class="hub"), home.device("mallory")
        await home.start(hub, mallory)
        svc = mesh_service(home, state_dir, monkeypatch)
        await svc.__aenter__()
        try:
            assert await svc.endpoint.wait_until(lambda: svc.endpoint.peers.get(mallory.id) is not None, 5)
            before = HouseholdState(state_dir).load()
            crl = home.root.revoke(mallory.id)
            advert = presence_of(hub).model_copy(update={"crl": crl})  # the hub's advert carries it
            home.sim.post_announcement(hub.id, _advert(hub, encode(advert)))
            assert await until(lambda: svc.membership.crl_version == crl.version)
            saved = HouseholdState(state_dir).load()
            assert saved.crl == crl  # on disk now, not at a clean exit
            assert {c.device_id for c in saved.peers} == {hub.id, mallory.id}  # certificates learned
            assert saved.model_copy(update={"crl": before.crl, "peers": before.peers}) == before
        finally:
            await svc.endpoint.close(clean=False)  # killed: no __aexit__, nothing saved on the way out
        home.sim.empty_board(hub.id)  # the new agent must know it from its own disk, not from the board
        again = mesh_service(home, state_dir, monkeypatch)
        with pytest.raises(NotAMemberError, match=f"^device {mallory.id} has been revoked$"):
            again.membership.member(mallory.id)
        assert again.membership.member(hub.id) == hub.certificate
        async with running(again, hub):
            assert mallory.id not in {p.device_id for p in again.endpoint.peers.all()}
            peer = again.endpoint.peers.get(hub.id)
            assert peer is not None and await again.endpoint.ping(peer) is not None


# -- pack_check: external data in function attributes and training info -----------------------------------


def _external(location: str) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def _model_hiding(where: str, location: str) -> onnx.ModelProto:
    """A model whose only escape sits where the old walk did not look (onnxruntime may or may not)."""
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value_float=1.0)], "g", [], [y])
    functions = []
    if where == "function attribute":  # FunctionProto.attribute_proto: an attribute's default value
        default = helper.make_attribute("value", _external(location))
        functions.append(helper.make_function(
            "local", "F", [], ["y"], [helper.make_node("Constant", [], ["y"], value_float=1.0)],
            [helper.make_opsetid("", 17)], attribute_protos=[default],
        ))  # fmt: skip
    model = helper.make_model(graph, functions=functions, opset_imports=[helper.make_opsetid("", 17)])
    if where.startswith("training"):  # TrainingInfoProto: initialization (1) and algorithm (2) graphs
        info = onnx.TrainingInfoProto()
        inner = helper.make_graph([], "inner", [], [], [_external(location)])
        (info.initialization if where == "training initialization" else info.algorithm).CopyFrom(inner)
        model.training_info.append(info)
    return model


@pytest.mark.parametrize("where", ["function attribute", "training initialization", "training algorithm"])
def test_pack_check_finds_external_data_in_function_defaults_and_training_info(
    tmp_path: Path, where: str
) -> None:
    (tmp_path / "model.onnx").write_bytes(_model_hiding(where, "../../secret").SerializeToString())
    assert external_data_locations(tmp_path / "model.onnx") == ["../../secret"]
    with pytest.raises(UnsafePackError) as refused:
        check_pack_dir(tmp_path, {"model.onnx"})
    assert str(refused.value) == "model.onnx refers to '../../secret', which is not a file of this pack"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_pack_check_walks_the_field_numbers_onnx_defines() -> None:
    fields: dict[tuple[Any, str], tuple[dict[int, str], str]] = {
        (onnx.ModelProto, "graph"): (pack_check._MODEL, "graph"),
        (onnx.ModelProto, "functions"): (pack_check._MODEL, "function"),
        (onnx.ModelProto, "training_info"): (pack_check._MODEL, "training"),
        (onnx.TrainingInfoProto, "initialization"): (pack_check._TRAINING, "graph"),
        (onnx.TrainingInfoProto, "algorithm"): (pack_check._TRAINING, "graph"),
        (onnx.FunctionProto, "node"): (pack_check._FUNCTION, "node"),
        (onnx.FunctionProto, "attribute_proto"): (pack_check._FUNCTION, "attribute"),
        (onnx.GraphProto, "node"): (pack_check._GRAPH, "node"),
        (onnx.GraphProto, "initializer"): (pack_check._GRAPH, "tensor"),
        (onnx.GraphProto, "sparse_initializer"): (pack_check._GRAPH, "sparse"),
        (onnx.NodeProto, "attribute"): (pack_check._NODE, "attribute"),
        (onnx.AttributeProto, "t"): (pack_check._ATTRIBUTE, "tensor"),
        (onnx.AttributeProto, "g"): (pack_check._ATTRIBUTE, "graph"),
        (onnx.AttributeProto, "tensors"): (pack_check._ATTRIBUTE, "tensor"),
        (onnx.AttributeProto, "graphs"): (pack_check._ATTRIBUTE, "graph"),
        (onnx.AttributeProto, "sparse_tensor"): (pack_check._ATTRIBUTE, "sparse"),
        (onnx.AttributeProto, "sparse_tensors"): (pack_check._ATTRIBUTE, "sparse"),
        (onnx.SparseTensorProto, "values"): (pack_check._SPARSE, "tensor"),
        (onnx.SparseTensorProto, "indices"): (pack_check._SPARSE, "tensor"),
    }
    for (proto, name), (table, kind) in fields.items():
        assert table[proto.DESCRIPTOR.fields_by_name[name].number] == kind, (proto.__name__, name)
    assert onnx.TensorProto.DESCRIPTOR.fields_by_name["external_data"].number == 13
