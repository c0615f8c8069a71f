"""Model updates over the mesh, on the in-memory transport with real endpoints and crypto: five agents,
one publishes, the others learn the key set and the manifest from their peers, fetch from every holder,
and a poisoned seeder is banned by device key while the download completes from the others. The chunk
tests run once per path (`PATHS`): over direct TLS links on loopback, and through the broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge_agent.mesh.direct import Ask, DirectLinks, Serve
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import ChunkData, ChunkRequest
from edge_agent.sync.exchange import UpdateExchange
from edge_agent.sync.keys import UpdateKey, UpdateKeySet, sign_key_set
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.swarm import FetchState
from tests.support.meshsim import Device, SimHousehold, household, until

FILES = {
    "pack.json": b'{"name": "demo"}',
    "model.onnx": b"".join(
        hashlib.blake2b(i.to_bytes(4, "big"), digest_size=64).digest() for i in range(16000)
    ),
    "vocab.spm": bytes(range(256)) * 700,
}


def exchange(home: SimHousehold, dev: Device, tmp: Path) -> UpdateExchange:
    store = UpdateStore(tmp / dev.name / "mesh")
    trusted, _ = store.load_trust(home.root.key.verify_key, home.root.household_id)
    return UpdateExchange(
        dev.endpoint, store, trusted, dev.certificate.device_class, tmp / dev.name / "staging"
    )


def publish(home: SimHousehold, hub: UpdateExchange, tmp: Path) -> tuple[bytes, Path]:
    """The hub's side: a key set signed by the root, a pack directory, its manifest signed and held."""
    key = SigningKey.generate()
    now = datetime.now(UTC)
    key_set = UpdateKeySet(household_id=home.root.household_id, version=1, threshold=1,
                           keys=[UpdateKey.of(key.verify_key, "hub")], issued_at=now,
                           expires_at=now + timedelta(days=30))  # fmt: skip
    envelope = sign_key_set(key_set, home.root.key)
    hub.trusted.update_key_set(envelope)
    hub.store.save_key_set(envelope)
    pack = tmp / "published"
    pack.mkdir()
    for name, data in FILES.items():
        (pack / name).write_bytes(data)
    manifest = build_manifest(
        pack, list(FILES), household_id=home.root.household_id, name="demo", pack_id="demo@int8",
        task="embed", sequence=2, device_classes=["appliance"], issued_at=now,
        expires_at=now + timedelta(days=7), chunk_size=64 << 10,
    )  # fmt: skip
    signed = sign_manifest(manifest, key)
    hub.hold(manifest, signed, pack)
    return signed, pack


async def pull(ex: UpdateExchange) -> tuple[FetchState, Path, dict[str, str]]:
    # Generous: discover returns as soon as every live peer has answered; the timeout only bounds a
    # silent one (a loaded CI machine once took over 2 s to answer here).
    found = await ex.discover(timeout=15)
    assert len(found) == 1, found
    manifest, envelope, holders = next(iter(found.values()))
    fetch, staging = await ex.fetch(manifest, envelope, holders, rediscover_s=0.2)
    return fetch.state, staging, fetch.banned


def same_files(staging: Path) -> bool:
    return all((staging / name).read_bytes() == data for name, data in FILES.items())


PATHS = pytest.mark.parametrize("path", ["direct", "broker"])
"""A chunk test, once over direct links and once through the broker: the same assertions hold."""


@contextlib.asynccontextmanager
async def direct(dev: Device, ex: UpdateExchange, serve: Serve | None = None) -> AsyncIterator[DirectLinks]:
    """Open ``dev``'s direct links on loopback (serving ``ex``'s chunks, or ``serve``'s answers) and
    announce them in its presence."""
    async with DirectLinks(dev.node, serve or ex.serve_direct, host="127.0.0.1") as links:
        ex.direct, dev.direct = links, links.contact
        yield links


async def announced(home: SimHousehold, *devices: Device) -> None:
    """Every started device has heard every other's direct contact (presence every 50 ms)."""

    def heard() -> bool:
        return all(
            (peer := d.endpoint.peers.get(o.id)) is not None and peer.presence.direct == o.direct
            for d in home.devices.values()
            for o in devices
            if o is not d
        )

    assert await until(heard)


def count_broker_chunks(dev: Device) -> list[int]:
    """The indices of every chunk ``dev`` receives through the broker, from now on."""
    seen: list[int] = []
    handler = dev.endpoint.handler_for(ChunkData)
    assert handler is not None

    def counting(sender: object, msg: ChunkData) -> None:
        seen.append(msg.index)
        handler(sender, msg)  # type: ignore[arg-type]

    dev.endpoint.register(ChunkData, counting)
    return seen


async def open_path(
    stack: contextlib.AsyncExitStack, home: SimHousehold, path: str, *devices: tuple[Device, UpdateExchange]
) -> None:
    """Make ``path`` the one chunks take between these devices: "direct" opens each one's links and
    waits until every device has heard every other's contact; "broker" is every exchange's default."""
    if path == "direct":
        for dev, ex in devices:
            await stack.enter_async_context(direct(dev, ex))
        await announced(home, *(dev for dev, _ in devices))


@PATHS
async def test_a_pack_reaches_four_peers_from_every_holder(tmp_path: Path, path: str) -> None:
    async with household(tmp_path) as home, contextlib.AsyncExitStack() as stack:
        devices = [home.device(n, device_class="hub" if n == "hub" else "appliance")
                   for n in ("hub", "fridge", "car", "phone", "plug")]  # fmt: skip
        await home.start(*devices)
        exchanges = {d.name: exchange(home, d, tmp_path) for d in devices}
        await open_path(stack, home, path, *((d, exchanges[d.name]) for d in devices))
        publish(home, exchanges["hub"], tmp_path)
        chunks = len(next(iter(exchanges["hub"].holdings.values())).manifest.chunks)
        via_broker = {d.name: count_broker_chunks(d) for d in devices}
        results = await asyncio.gather(*(pull(exchanges[n]) for n in ("fridge", "car", "phone", "plug")))
        for state, staging, banned in results:
            assert state is FetchState.DONE and banned == {}
            assert same_files(staging)
        total = sum(len(v) for v in FILES.values())
        for name in ("fridge", "car", "phone", "plug"):
            # Every chunk came by the path under test, and only by it.
            assert exchanges[name].received == {path: total}
            if path == "direct":
                assert via_broker[name] == []
            else:
                assert set(via_broker[name]) == set(range(chunks))
        for name in ("fridge", "car", "phone", "plug"):  # the key set came from peers, and was saved
            assert exchanges[name].trusted.key_set is not None
            assert (
                exchanges[name].store.key_set_path.read_bytes()
                == exchanges["hub"].store.key_set_path.read_bytes()
            )
            assert len(exchanges[name].holdings) == 1  # and each now seeds what it fetched


@PATHS
async def test_a_poisoned_seeder_is_banned_by_device_key_and_the_download_completes(
    tmp_path: Path, path: str
) -> None:
    async with household(tmp_path) as home, contextlib.AsyncExitStack() as stack:
        hub, fridge, plug = (home.device(n, device_class="hub" if n == "hub" else "appliance")
                             for n in ("hub", "fridge", "plug"))  # fmt: skip
        await home.start(hub, fridge, plug)
        ex = {d.name: exchange(home, d, tmp_path) for d in (hub, fridge, plug)}
        signed, pack = publish(home, ex["hub"], tmp_path)
        manifest = next(iter(ex["hub"].holdings.values())).manifest
        ex["plug"].trusted.update_key_set(ex["hub"].store.key_set_path.read_bytes())
        ex["plug"].hold(manifest, signed, pack)

        # The plug serves garbage of the right length, on the path under test.
        def poisoned(requester: DeviceCertificate, req: ChunkRequest) -> None:
            data = bytes(manifest.chunk_length(req.index))
            msg = ChunkData(nonce=req.nonce, content_id=req.content_id, index=req.index,
                            data=base64.b64encode(data).decode())  # fmt: skip
            plug.endpoint.send_soon(requester.device_id, Channel.RESPONSES, msg, session=req.reply_session)

        async def poisoned_directly(requester: str, ask: Ask) -> bytes:
            return bytes(manifest.chunk_length(ask.index))

        if path == "direct":
            await open_path(stack, home, path, (hub, ex["hub"]), (fridge, ex["fridge"]))
            bad = await stack.enter_async_context(DirectLinks(plug.node, poisoned_directly, host="127.0.0.1"))
            ex["plug"].direct, plug.direct = bad, bad.contact
            await announced(home, hub, fridge, plug)
        else:
            plug.endpoint.register(ChunkRequest, poisoned)

        # The fridge knows both holders before it asks (else, on a loaded machine, the hub alone may
        # serve every chunk before the plug's holdings are heard, and nobody poisons anything).
        def alive() -> set[str]:
            return {p.device_id for p in fridge.endpoint.peers.all() if p.alive(time.monotonic())}

        assert await fridge.endpoint.wait_until(lambda: {hub.id, plug.id} <= alive(), 10)
        found = await ex["fridge"].discover(timeout=10)
        [(manifest_found, envelope, holders)] = found.values()
        assert set(holders) == {hub.id, plug.id}
        fetch, staging = await ex["fridge"].fetch(manifest_found, envelope, holders, rediscover_s=0.2)
        state, banned = fetch.state, fetch.banned
        assert state is FetchState.DONE and same_files(staging)
        assert list(banned) == [plug.id] and "bad chunk" in banned[plug.id]
        assert fridge.endpoint.dropped["ChunkDigestError"] >= 1
        assert ex["fridge"].received == {path: sum(len(v) for v in FILES.values())}


async def test_a_manifest_for_another_class_is_not_fetched(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, speaker = (
            home.device("hub", device_class="hub"),
            home.device("car", device_class="vehicle"),
        )
        await home.start(hub, speaker)
        ex_hub, ex_speaker = exchange(home, hub, tmp_path), exchange(home, speaker, tmp_path)
        publish(home, ex_hub, tmp_path)
        assert await ex_speaker.discover(timeout=2) == {}
        assert speaker.endpoint.dropped["WrongDeviceClassError"] == 1


def _stage(ex: UpdateExchange, manifest_holder: UpdateExchange, chunks: range) -> None:
    """Put ``chunks`` of the published pack into ``ex``'s staging, as an interrupted fetch left them."""
    from edge_agent.sync.staging import prepare_staging, read_chunk, write_chunk

    holding = next(iter(manifest_holder.holdings.values()))
    staging = ex.staging_root / holding.manifest.content_id
    prepare_staging(staging, holding.manifest)
    for i in chunks:
        write_chunk(staging, holding.manifest, i, read_chunk(holding.directory, holding.manifest, i))


@PATHS
async def test_a_restarted_fetch_asks_only_for_what_it_lacks(tmp_path: Path, path: str) -> None:
    async with household(tmp_path) as home, contextlib.AsyncExitStack() as stack:
        hub, fridge = home.device("hub", device_class="hub"), home.device("fridge")
        await home.start(hub, fridge)
        ex_hub, ex_fridge = exchange(home, hub, tmp_path), exchange(home, fridge, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        half = len(manifest.chunks) // 2
        _stage(ex_fridge, ex_hub, range(half))  # verified chunks on disk from before the restart
        asked: list[int] = []
        serve, serve_directly = ex_hub._serve_chunk, ex_hub.serve_direct

        def counting(requester: DeviceCertificate, req: ChunkRequest) -> None:
            asked.append(req.index)
            serve(requester, req)

        async def counting_directly(requester: str, ask: Ask) -> bytes:
            asked.append(ask.index)
            return await serve_directly(requester, ask)

        hub.endpoint.register(ChunkRequest, counting)
        if path == "direct":
            await stack.enter_async_context(direct(hub, ex_hub, counting_directly))
            await open_path(stack, home, path, (fridge, ex_fridge))
            await announced(home, hub, fridge)
        state, staging, _ = await pull(ex_fridge)
        assert state is FetchState.DONE and same_files(staging)
        assert sorted(asked) == list(range(half, len(manifest.chunks)))
        assert ex_fridge.received == {
            path: sum(manifest.chunk_length(i) for i in range(half, len(manifest.chunks)))
        }


async def test_the_only_full_seeder_dies_at_half_and_the_rest_comes_from_a_partial_holder_and_its_return(
    tmp_path: Path,
) -> None:
    async with household(tmp_path) as home:
        hub, fridge, car = home.device("hub", device_class="hub"), home.device("fridge"), home.device("car")
        await home.start(hub, fridge, car)
        ex = {d.name: exchange(home, d, tmp_path) for d in (hub, fridge, car)}
        signed, _ = publish(home, ex["hub"], tmp_path)
        manifest = next(iter(ex["hub"].holdings.values())).manifest
        n = len(manifest.chunks)
        ex["fridge"].trusted.update_key_set(ex["hub"].store.key_set_path.read_bytes())
        _stage(ex["fridge"], ex["hub"], range(n // 2))  # the fridge holds the first half only
        ex["fridge"].hold(
            manifest, signed, ex["fridge"].staging_root / manifest.content_id, set(range(n // 2))
        )

        arrived = ex["car"]._arrived  # every chunk the car verifies, by whichever path it came
        crashed = asyncio.Event()

        def watching(sender: str, content_id: str, index: int, data: bytes, path: str) -> None:
            arrived(sender, content_id, index, data, path)
            fetch = ex["car"]._fetches.get(content_id)
            if fetch is not None and not crashed.is_set() and len(fetch[0].have) >= n // 2:
                crashed.set()
                home.sim.crash(hub.id)  # the only complete seeder dies; its endpoint comes back later

        ex["car"]._arrived = watching  # type: ignore[method-assign]
        state, staging, banned = await pull(ex["car"])
        assert crashed.is_set()
        assert state is FetchState.DONE and banned == {} and same_files(staging)
        assert car.endpoint.peers.get(hub.id) is not None  # the hub is back
        served = {d: p.served for d, p in ex["car"]._last_fetch.peers.items()}
        assert served.get(fridge.id, 0) > 0  # the partial holder served what it had


async def test_a_higher_sequence_that_does_not_verify_is_reported_not_fetched(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        _, pack = publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        rogue = sign_manifest(manifest.model_copy(update={"sequence": 9}), SigningKey.generate())
        ex_hub.holdings.clear()
        ex_hub.hold(manifest.model_copy(update={"sequence": 9}), rogue, pack)
        before = (ex_car.trusted.installed.copy(), ex_car.holdings.copy())
        assert await ex_car.discover(timeout=2) == {}
        sequence, why = ex_car.unverifiable["demo"]
        assert sequence == 9 and why.startswith("UnknownUpdateKeyError: manifest is signed only by keys")
        assert (ex_car.trusted.installed, ex_car.holdings) == before


async def test_a_pack_over_the_quota_is_not_staged_and_the_reason_is_given(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        publish(home, ex_hub, tmp_path)
        ex_car.quota_bytes = 1 << 20
        found = await ex_car.discover(timeout=2)
        manifest, envelope, holders = next(iter(found.values()))
        fetch, staging = await ex_car.fetch(manifest, envelope, holders)
        assert fetch.state is FetchState.GAVE_UP
        assert fetch.reason == "demo@int8 is 1.2 MB; the update quota here is 1.0 MB"
        assert not staging.exists() and ex_car.holdings == {}


async def test_a_member_flooding_chunk_requests_gets_a_bounded_number_of_replies(tmp_path: Path) -> None:
    from edge_agent.sync.exchange import MAX_REPLIES_PER_PEER

    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub = exchange(home, hub, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        gate = asyncio.Event()
        send = hub.endpoint.send_quietly

        async def slow_link(*args: object, **kw: object) -> None:  # the hub's uplink is saturated
            await gate.wait()
            await send(*args, **kw)  # type: ignore[arg-type]

        hub.endpoint.send_quietly = slow_link  # type: ignore[method-assign]
        got: list[int] = []
        car.endpoint.register(ChunkData, lambda sender, msg: got.append(msg.index))
        peer = car.endpoint.peers.get(hub.id)
        assert peer is not None
        for i in range(20):
            req = ChunkRequest(
                nonce=i, reply_session=car.node.session, content_id=manifest.content_id, index=i
            )
            await car.endpoint.send(hub.id, Channel.REQUESTS, req, session=peer.session)
        flood = hub.endpoint.dropped
        assert await until(lambda: flood["UpdateRequestFlood"] == 20 - MAX_REPLIES_PER_PEER)
        assert sum(ex_hub._replying.values()) == MAX_REPLIES_PER_PEER  # what is held back is bounded
        gate.set()
        assert await until(lambda: len(got) == MAX_REPLIES_PER_PEER)
        assert sorted(got) == list(range(MAX_REPLIES_PER_PEER)) and not ex_hub._replying


async def test_staging_untouched_for_a_week_is_pruned_and_a_recent_one_kept(tmp_path: Path) -> None:
    import os
    import time

    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        _stage(ex_car, ex_hub, range(3))  # a fetch that gave up left three verified chunks
        stale = ex_car.staging_root / "0123456789abcdef"
        stale.mkdir()
        (stale / "model.onnx").write_bytes(b"old")
        week_ago = time.time() - 8 * 86400
        for path in (stale / "model.onnx", stale):
            os.utime(path, (week_ago, week_ago))
        assert ex_car.prune_staging() == ["0123456789abcdef"]
        assert not stale.exists() and (ex_car.staging_root / manifest.content_id).is_dir()
