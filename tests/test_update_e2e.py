"""A model update end to end on a real Mosquitto with real agents and real weights: the hub publishes
the en→pt translation pack as sequence 2 (with a recorded health check); the fridge panel, serving
translations all the while, learns the key set and manifest from the hub, fetches the chunks, verifies,
health-checks and activates it, then seeds it itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.rigs.brokers import run_mosquitto
from benchmarks.rigs.meshkit import config, provision, service
from edge_agent.client.schemas import GenerateRequest, TranslateRequest
from edge_agent.engines.generate import GenerateEngine
from edge_agent.hearth import Hearth
from edge_agent.mesh.household import HouseholdRoot
from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.mesh.state import HouseholdState
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.sync.keys import UpdateKeySet, sign_key_set
from edge_agent.sync.manifest import HealthCheck
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.store import UpdateStore
from edge_agent.updates.health import probe

pytestmark = pytest.mark.slow  # a real Mosquitto, agents on the built packs

PACK = "bergamot-tiny11-en-pt@int8"
SENTENCE = "Good morning, the coffee is ready."


def update_keys(hub_home: Path) -> tuple[UpdateStore, HouseholdRoot, UpdateKeySet, datetime]:
    """The hub's root lists the hub's update key (as `hearth household update-key(s)` do)."""
    hub_updates = UpdateStore(hub_home)
    card = hub_updates.create_signing_key("hub")
    root, _ = HouseholdState(hub_home).load_root()
    now = datetime.now(UTC)
    key_set = UpdateKeySet(household_id=root.household_id, version=1, threshold=1, keys=[card],
                           issued_at=now, expires_at=now + timedelta(days=30))  # fmt: skip
    hub_updates.save_key_set(sign_key_set(key_set, root.key))
    return hub_updates, root, key_set, now


async def test_the_fridge_receives_verifies_and_activates_a_new_sequence_while_serving(
    tmp_path: Path, store: PackStore
) -> None:
    hub_home, fridge_home = tmp_path / "hub", tmp_path / "fridge"
    provision(hub_home, hub_home, "hub", "hub")
    provision(hub_home, fridge_home, "fridge", "fridge-panel")
    source = store.get(PACK)
    fridge_store = PackStore(tmp_path / "fridge-store")  # the fridge's own copy (sequence 1)
    fridge_store.install(source.path, source.manifest)

    hub_updates, root, key_set, now = update_keys(hub_home)

    with run_mosquitto(tmp_path / "broker") as broker:
        hub = service(hub_home, config("hub", broker.port, "hub"), store)
        fridge = service(fridge_home, config("fridge", broker.port, "fridge-panel"), fridge_store)
        async with hub, fridge:
            await fridge.mesh.endpoint.wait_until(lambda: hub.mesh.certificate.device_id in {
                p.device_id for p in fridge.mesh.endpoint.peers.all()}, 10)  # fmt: skip
            # The hub publishes sequence 2, with the answer its copy gives as the health check.
            expect = probe(source.path, "translate", source.manifest.task_info, SENTENCE, "en-pt")
            manifest = build_manifest(
                source.path, [MANIFEST_NAME, *(f.path for f in source.manifest.files)],
                household_id=root.household_id, name=source.manifest.name, pack_id=PACK, task="translate",
                sequence=2, device_classes=["appliance"], issued_at=now, expires_at=now + timedelta(days=7),
                chunk_size=256 << 10, health=HealthCheck(input=SENTENCE, expect=expect, pair="en-pt"),
            )  # fmt: skip
            signing_key, _ = hub_updates.signing_key()
            envelope = sign_manifest(manifest, signing_key)
            hub.updater.updates.save_manifest(manifest, envelope)
            # The fridge's own first round (at start) is over: the one below is the one that finds it.
            assert await fridge.mesh.endpoint.wait_until(lambda: fridge.updater.rounds >= 1, 10)
            hub.updater.exchange.hold(manifest, envelope, source.path)

            request = TranslateRequest(texts=[SENTENCE], source="en", target="pt")
            serving = asyncio.create_task(fridge.translate(request))  # a user asks during the update
            await fridge.updater.check_once()  # or the round the hub's announcement woke, whichever ran
            outcomes = fridge.updater.outcomes
            result, _ = await serving
            assert result.translations[0] == expect

            assert [(o.pack_id, o.sequence, o.state) for o in outcomes] == [(PACK, 2, "activated")]
            # Every chunk came over the direct TLS link, none through the broker.
            assert fridge.updater.exchange.received == {"direct": manifest.total_size}
            assert hub.mesh.presence().direct is not None
            assert fridge.updater.trusted.installed == {source.manifest.name: 2}
            saved = json.loads(UpdateStore(fridge_home).installed_path.read_text())
            assert saved == {source.manifest.name: 2}
            assert fridge.updater.trusted.key_set == key_set  # learned from the hub, root-signed
            assert (fridge_store.previous / PACK).is_dir()  # sequence 1 kept for rollback
            again, _ = await fridge.translate(request)
            assert again.translations[0] == expect
            # The fridge now seeds the pack: the hub sees it holding every chunk.
            found = await hub.updater.exchange.discover()
            hub_view = found.get(manifest.content_id)
            assert hub_view is None  # the hub is a hub: the manifest is for appliances
            assert len(fridge.updater.exchange.holdings[manifest.content_id].have) == len(manifest.chunks)
            # A second round finds nothing new.
            assert await fridge.updater.check_once() == []
            # The fridge's presence says so (Home Assistant's update entities read it).
            [status] = [u for u in fridge.mesh.presence().updates if u.name == source.manifest.name]
            assert (status.installed, status.available, status.state) == (2, 2, "activated")


async def test_models_pull_one_shot_and_through_the_running_agent(tmp_path: Path, store: PackStore) -> None:
    """`hearth models pull`'s two paths: a one-shot agent of its own (asks over direct links, serves
    nothing), and the running agent's local socket (progress streamed back)."""
    from edge_agent.local_api import LocalClient

    hub_home = tmp_path / "hub"
    provision(hub_home, hub_home, "hub", "hub")
    homes = {name: tmp_path / name for name in ("fridge", "car")}
    for name, home in homes.items():
        provision(hub_home, home, name, "fridge-panel")
    source = store.get(PACK)
    stores = {name: PackStore(tmp_path / f"{name}-store") for name in homes}
    for own in stores.values():
        own.install(source.path, source.manifest)
    hub_updates, root, _, now = update_keys(hub_home)
    manifest = build_manifest(
        source.path, [MANIFEST_NAME, *(f.path for f in source.manifest.files)],
        household_id=root.household_id, name=source.manifest.name, pack_id=PACK, task="translate",
        sequence=3, device_classes=["appliance"], issued_at=now, expires_at=now + timedelta(days=7),
    )  # fmt: skip
    envelope = sign_manifest(manifest, hub_updates.signing_key()[0])

    with run_mosquitto(tmp_path / "broker") as broker:
        hub = service(hub_home, config("hub", broker.port, "hub"), store)
        panel = load_profile("fridge-panel")
        plan = plan_for_profile(panel, [p.manifest for p in stores["car"].list()])
        car = Hearth(config("car", broker.port, "fridge-panel"), panel, stores["car"], plan,
                     serve=True, state_dir=homes["car"], local_socket=True)  # fmt: skip
        async with hub, car:
            # The car's agent runs; its own first round (at start) found nothing new.
            assert await car.mesh.endpoint.wait_until(lambda: car.updater.rounds >= 1, 10)
            hub.updater.exchange.hold(manifest, envelope, source.path)
            # One shot: no agent runs on the fridge, so the command is the agent for one round.
            fridge_cfg = config("fridge", broker.port, "fridge-panel")
            oneshot = service(homes["fridge"], fridge_cfg, stores["fridge"], serve=False)
            async with oneshot:
                outcomes = await oneshot.pull_updates({source.manifest.name})
                assert [(o.pack_id, o.sequence, o.state) for o in outcomes] == [(PACK, 3, "activated")]
                assert oneshot.updater.exchange.received == {"direct": manifest.total_size}
                assert oneshot.mesh.presence().direct is None  # asks directly, listens nowhere
            assert UpdateStore(homes["fridge"]).load_trust(root.key.verify_key, root.household_id)[
                0
            ].installed == {source.manifest.name: 3}
            # Through the running agent: its local socket streams the round's progress.
            seen: list[list[UpdateStatus]] = []
            async with LocalClient(car.socket_path) as client:
                pulled = await client.pull_updates(None, seen.append)
            # The car's own agent may have heard the hub's announcement first: then this round found
            # nothing left to do. Either way, one activation.
            activated = [(o.pack_id, o.sequence, o.state) for o in car.updater.outcomes]
            assert activated == [(PACK, 3, "activated")]
            assert [(o.pack_id, o.sequence, o.state) for o in pulled] in ([], activated)
            assert seen and seen[-1][0].name == source.manifest.name
            assert car.updater.trusted.installed == {source.manifest.name: 3}


async def test_a_new_pack_reaches_four_agents_each_activates_it_and_a_chat_keeps_its_answer(
    tmp_path: Path, store: PackStore, llm_int4: GenerateEngine
) -> None:
    """Five real agents on a real Mosquitto: the hub publishes sequence 2 of the en→pt pack; the fridge,
    car, phone and laptop each fetch it (from the hub and from each other, over direct links), verify,
    health-check and activate it. Meanwhile the fridge streams a chat from the hub: while that answer
    is open its fetch holds one chunk in flight, and the chat gets every token."""
    hub_home = tmp_path / "hub"
    provision(hub_home, hub_home, "hub", "hub")
    peers = {"fridge": "fridge-panel", "car": "car-headunit", "phone": "phone", "laptop": "laptop"}
    for name, profile in peers.items():
        provision(hub_home, tmp_path / name, name, profile)
    source = store.get(PACK)
    stores = {name: PackStore(tmp_path / f"{name}-store") for name in peers}
    for own in stores.values():
        own.install(source.path, source.manifest)
    hub_updates, root, _, now = update_keys(hub_home)
    expect = probe(source.path, "translate", source.manifest.task_info, SENTENCE, "en-pt")
    manifest = build_manifest(
        source.path, [MANIFEST_NAME, *(f.path for f in source.manifest.files)],
        household_id=root.household_id, name=source.manifest.name, pack_id=PACK, task="translate",
        sequence=2, device_classes=["appliance", "vehicle", "phone", "laptop"], issued_at=now,
        expires_at=now + timedelta(days=7), health=HealthCheck(input=SENTENCE, expect=expect, pair="en-pt"),
    )  # fmt: skip
    envelope = sign_manifest(manifest, hub_updates.signing_key()[0])

    with run_mosquitto(tmp_path / "broker") as broker:
        hub = service(hub_home, config("hub", broker.port, "hub"), store)
        agents = {n: service(tmp_path / n, config(n, broker.port, p, prefer_local=True), stores[n])
                  for n, p in peers.items()}  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(hub)
            for agent in agents.values():
                await stack.enter_async_context(agent)
            for agent in agents.values():  # each agent's own first round (at start) found nothing new
                assert await agent.mesh.endpoint.wait_until(lambda a=agent: a.updater.rounds >= 1, 10)
            fridge = agents["fridge"]
            await fridge.wait_for_peers("generate", timeout=5)
            everyone = {a.mesh.certificate.device_id for a in (hub, *agents.values())}
            for agent in agents.values():  # each has heard every other's direct contact
                assert await agent.mesh.endpoint.wait_until(lambda a=agent: {
                    p.device_id for p in a.mesh.endpoint.peers.all() if p.presence.direct
                } == everyone - {a.mesh.certificate.device_id}, 10)  # fmt: skip

            # What the fridge's fetch asks while its chat is open: (inference busy, chunks in flight).
            exchange = fridge.updater.exchange
            asked: list[tuple[bool, int]] = []
            asked_during_chat = asyncio.Event()
            request = exchange._request

            async def watching(fetch: Any, device_id: str, content_id: str, index: int) -> None:
                busy = fridge.mesh.inference_busy()
                asked.append((busy, len(fetch.in_flight())))
                if busy:
                    asked_during_chat.set()
                await request(fetch, device_id, content_id, index)

            exchange._request = watching  # type: ignore[method-assign]
            prompt = GenerateRequest.from_prompt("Describe a kitchen.", max_tokens=48)
            chat = fridge.generate(prompt)
            chunks = aiter(chat)
            first = await anext(chunks)  # the answer is streaming from the hub: inference in flight
            hub.updater.exchange.hold(manifest, envelope, source.path)  # published while the chat runs
            fridge_round = asyncio.create_task(fridge.updater.check_once())
            await asyncio.wait_for(asked_during_chat.wait(), 30)  # the chat stays open until we read it
            rest = [c async for c in chunks]
            assert chat.served_by == "hub" and chat.failovers == 0
            assert "".join(c.text for c in [first, *rest]) == llm_int4.complete(prompt)[0]  # every token
            while_busy = [in_flight for busy, in_flight in asked if busy]
            assert while_busy and max(while_busy) <= 1  # one chunk in flight while the chat ran

            rounds = [fridge_round, *(asyncio.create_task(a.updater.check_once()) for n, a in agents.items()
                                       if n != "fridge")]  # fmt: skip
            await asyncio.gather(*rounds)  # these, or the rounds the hub's announcement woke
            for agent in agents.values():
                activated = [(o.pack_id, o.sequence, o.state) for o in agent.updater.outcomes]
                assert activated == [(PACK, 2, "activated")]
                assert agent.updater.trusted.installed == {source.manifest.name: 2}
                assert agent.updater.exchange.received.keys() == {"direct"}  # nothing through the broker
                again, _ = await agent.translate(TranslateRequest(texts=[SENTENCE], source="en", target="pt"))
                assert again.translations[0] == expect


async def test_a_fetch_through_the_broker_resumes_after_the_broker_restarts(
    tmp_path: Path, store: PackStore
) -> None:
    """Direct links off: every chunk goes through Mosquitto, which is restarted a quarter of the way
    in. The fridge's fetch loses what was in flight, keeps what it verified, finds the hub again when
    it re-announces, and finishes: the same pack, activated."""
    from benchmarks.rigs.brokers import free_port

    hub_home, fridge_home = tmp_path / "hub", tmp_path / "fridge"
    provision(hub_home, hub_home, "hub", "hub")
    provision(hub_home, fridge_home, "fridge", "fridge-panel")
    source = store.get(PACK)
    fridge_store = PackStore(tmp_path / "fridge-store")
    fridge_store.install(source.path, source.manifest)
    hub_updates, root, _, now = update_keys(hub_home)
    manifest = build_manifest(
        source.path, [MANIFEST_NAME, *(f.path for f in source.manifest.files)],
        household_id=root.household_id, name=source.manifest.name, pack_id=PACK, task="translate",
        sequence=4, device_classes=["appliance"], issued_at=now, expires_at=now + timedelta(days=7),
    )  # fmt: skip
    envelope = sign_manifest(manifest, hub_updates.signing_key()[0])
    port = free_port()
    fridge_cfg = config("fridge", port, "fridge-panel")
    fridge_cfg = fridge_cfg.model_copy(
        update={"updates": fridge_cfg.updates.model_copy(update={"direct": False})}
    )
    broker = run_mosquitto(tmp_path / "broker", port=port)
    broker.__enter__()
    try:
        hub = service(hub_home, config("hub", port, "hub"), store)
        fridge = service(fridge_home, fridge_cfg, fridge_store)
        async with hub, fridge:
            assert await fridge.mesh.endpoint.wait_until(lambda: fridge.updater.rounds >= 1, 10)
            hub.updater.exchange.hold(manifest, envelope, source.path)
            exchange = fridge.updater.exchange
            quarter, arrived = asyncio.Event(), exchange._arrived

            def counting(sender: str, content_id: str, index: int, data: bytes, path: str) -> None:
                arrived(sender, content_id, index, data, path)
                fetches = exchange._fetches.get(content_id)
                if fetches is not None and len(fetches[0].have) >= len(manifest.chunks) // 4:
                    quarter.set()

            exchange._arrived = counting  # type: ignore[method-assign]
            round_ = asyncio.create_task(fridge.updater.check_once())
            await asyncio.wait_for(quarter.wait(), 60)
            broker.__exit__(None, None, None)  # SIGTERM, waits for the PID to exit
            broker = run_mosquitto(tmp_path / "broker", port=port)
            broker.__enter__()
            await asyncio.wait_for(round_, 120)  # or the round the hub's announcement woke
            assert [(o.pack_id, o.sequence, o.state) for o in fridge.updater.outcomes] == [
                (PACK, 4, "activated")
            ]
            assert exchange.received == {"broker": manifest.total_size}  # each verified chunk once
    finally:
        broker.__exit__(None, None, None)


async def test_a_published_pack_is_announced_and_fetched_without_waiting_for_a_round(
    tmp_path: Path, store: PackStore
) -> None:
    """The hub publishes (as `hearth models publish` does: the manifest stored, then a round through
    the running agent); its presence now offers sequence 5, and the fridge's agent, whose next
    scheduled round is 300 s away, fetches and activates it at once."""
    hub_home, fridge_home = tmp_path / "hub", tmp_path / "fridge"
    provision(hub_home, hub_home, "hub", "hub")
    provision(hub_home, fridge_home, "fridge", "fridge-panel")
    source = store.get(PACK)
    fridge_store = PackStore(tmp_path / "fridge-store")
    fridge_store.install(source.path, source.manifest)
    hub_updates, root, _, now = update_keys(hub_home)
    manifest = build_manifest(
        source.path, [MANIFEST_NAME, *(f.path for f in source.manifest.files)],
        household_id=root.household_id, name=source.manifest.name, pack_id=PACK, task="translate",
        sequence=5, device_classes=["appliance"], issued_at=now, expires_at=now + timedelta(days=7),
    )  # fmt: skip
    with run_mosquitto(tmp_path / "broker") as broker:
        hub = service(hub_home, config("hub", broker.port, "hub"), store)
        fridge = service(fridge_home, config("fridge", broker.port, "fridge-panel"), fridge_store)
        async with hub, fridge:
            assert fridge.updater.interval_s == 300
            assert await fridge.mesh.endpoint.wait_until(lambda: fridge.updater.rounds >= 1, 10)
            hub_updates.save_manifest(manifest, sign_manifest(manifest, hub_updates.signing_key()[0]))
            assert await hub.pull_updates(set()) == []  # seeds what was published, announces it
            [offer] = [u for u in hub.mesh.presence().updates if u.name == source.manifest.name]
            assert offer.offered == 5
            name = source.manifest.name
            assert await fridge.mesh.endpoint.wait_until(
                lambda: fridge.updater.trusted.installed == {name: 5}, 30
            )
            assert [(o.pack_id, o.sequence, o.state) for o in fridge.updater.outcomes] == [
                (PACK, 5, "activated")
            ]


async def test_a_device_that_asks_for_approval_waits_for_a_controller_and_ignores_other_members(
    tmp_path: Path, store: PackStore
) -> None:
    """`[updates] approval = "ask"`: the fridge finds sequence 2 and waits, saying so in presence (Home
    Assistant's update entity offers "install"). The car (an appliance) approving is dropped as
    forbidden with nothing changed; Home Assistant (a hub-class member, through the mesh library's
    `MeshMember.approve_update`) approving it makes the fridge fetch, verify and activate it."""
    from edge_agent.mesh.member import MeshMember

    hub_home, fridge_home = tmp_path / "hub", tmp_path / "fridge"
    car_home, ha_home = tmp_path / "car", tmp_path / "ha"
    provision(hub_home, hub_home, "hub", "hub")
    provision(hub_home, fridge_home, "fridge", "fridge-panel")
    provision(hub_home, car_home, "car", "car-headunit")
    provision(hub_home, ha_home, "home-assistant", "hub")
    source = store.get(PACK)
    fridge_store = PackStore(tmp_path / "fridge-store")
    fridge_store.install(source.path, source.manifest)
    name = source.manifest.name
    hub_updates, root, _, now = update_keys(hub_home)
    manifest = build_manifest(
        source.path, [MANIFEST_NAME, *(f.path for f in source.manifest.files)],
        household_id=root.household_id, name=name, pack_id=PACK, task="translate",
        sequence=2, device_classes=["appliance"], issued_at=now, expires_at=now + timedelta(days=7),
    )  # fmt: skip
    envelope = sign_manifest(manifest, hub_updates.signing_key()[0])

    with run_mosquitto(tmp_path / "broker") as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        hub = service(hub_home, config("hub", broker.port, "hub"), store)
        cfg = config("fridge", broker.port, "fridge-panel").model_copy(deep=True)
        cfg.updates.approval = "ask"
        fridge = service(fridge_home, cfg, fridge_store)
        async with hub, fridge, MeshMember(car_home, url) as car, MeshMember(ha_home, url) as ha:
            fridge_id = fridge.mesh.certificate.device_id
            hub.updater.exchange.hold(manifest, envelope, source.path)
            assert await fridge.mesh.endpoint.wait_until(lambda: fridge.updater.rounds >= 1, 10)
            assert await fridge.updater.check_once() == []  # found, not fetched: it awaits approval
            assert fridge.updater.awaiting == {name: 2}
            [status] = [u for u in fridge.mesh.presence().updates if u.name == name]
            assert (status.installed, status.available, status.state) == (0, 2, "awaiting-approval")
            # Home Assistant sees it in the fridge's presence.
            assert await ha.endpoint.wait_until(lambda: any(
                u.state == "awaiting-approval" for p in ha.peers() if p.device_id == fridge_id
                for u in p.presence.updates), 10)  # fmt: skip

            # The car may not approve: dropped as forbidden, nothing approved, nothing fetched.
            dropped = fridge.mesh.endpoint.dropped["Forbidden"]
            await car.approve_update(fridge_id, name, 2)
            assert await fridge.mesh.endpoint.wait_until(
                lambda: fridge.mesh.endpoint.dropped["Forbidden"] == dropped + 1, 10
            )
            assert fridge.updater.approved == {} and fridge.updater.awaiting == {name: 2}
            assert fridge.updater.outcomes == [] and fridge.updater.trusted.installed == {}

            # Home Assistant may: the fridge's next round (woken at once) fetches and activates it.
            await ha.approve_update(fridge_id, name, 2)
            assert await fridge.mesh.endpoint.wait_until(lambda: bool(fridge.updater.outcomes), 60)
            assert [(o.pack_id, o.sequence, o.state) for o in fridge.updater.outcomes] == [
                (PACK, 2, "activated")
            ]
            assert fridge.updater.trusted.installed == {name: 2} and fridge.updater.awaiting == {}
            saved = json.loads((UpdateStore(fridge_home).dir / "approved.json").read_text())
            assert saved == {name: 2}  # a restart keeps the approval
