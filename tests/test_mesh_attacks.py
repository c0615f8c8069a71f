"""Attacks from the security review, on the in-memory mesh: each asserts the exact refusal AND that
trusted state (peer table, streams, memory, keys) is unchanged where it must be."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.errors import PeerLostError, RecipientNotMemberError, ReplayError, StreamBrokenError
from edge_agent.mesh.envelope import seal
from edge_agent.mesh.features.translation_memory import MemoryExchange
from edge_agent.mesh.interfaces import Address, Channel
from edge_agent.mesh.memory import TranslationMemory, digest, make_entry, salt_for
from edge_agent.mesh.node import GroupKeys
from edge_agent.mesh.protocol import Chunk, Departure, Offer, Presence, Request, decode, encode, padded_size
from edge_agent.mesh.rpc import StreamReassembler
from edge_agent.mesh.settings import MeshLimits, MeshSettings
from tests.support.meshsim import GATES, household, until


def _stream(dev, peer, words, **body):  # type: ignore[no-untyped-def]
    return dev.endpoint.stream(
        dev.endpoint.peers.get(peer.id), "generate", {"words": words, **body}, deadline_s=5, stall_s=1
    )


def _sealed_request(home, sender, to) -> tuple[Address, bytes]:  # type: ignore[no-untyped-def]
    """A genuine frame from ``sender`` to ``to``'s request inbox and current session."""
    address = Address(home.root.household_id, to.id, Channel.REQUESTS)
    frame = seal(
        sender.identity,
        topic=f"{address}#{to.node.session}",
        counter=sender.node.counter.next(),
        payload=b"{}",
        recipient=to.certificate,
    )
    return address, frame


async def _started(dev, peer, words, gate):  # type: ignore[no-untyped-def]
    """A stream from ``dev`` that ``peer`` has accepted and holds at ``gate`` (a test opens it)."""
    GATES[gate] = asyncio.Queue()
    stream = _stream(dev, peer, words, gate=gate)
    pending = asyncio.ensure_future(stream.__anext__())
    assert await until(lambda: peer.endpoint.queue_depth == 1)
    return stream, pending


async def _collect(agen) -> list[Chunk]:  # type: ignore[no-untyped-def]
    return [c async for c in agen]


# -- finding 1: revoked or expired peers receive nothing ------------------------------------------------


async def test_revoked_peer_gets_nothing_and_is_purged(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], admin=True)
        fridge = home.device("fridge")
        phone = home.device("phone")
        await home.start(hub, fridge, phone)
        stream, pending = await _started(phone, hub, ["a", "b"], "g1")
        home.revoke(phone)
        # The hub stopped serving the revoked requester, and refuses to send it anything at all.
        assert await until(lambda: hub.endpoint.queue_depth == 0)
        with pytest.raises(
            RecipientNotMemberError,
            match=f"not sending to {phone.id[:8]}: device {phone.id} has been revoked",
        ):
            await hub.node.send(phone.id, Channel.RESPONSES, b"x", session=phone.node.session)
        sent_before = len(home.sim.wiretap.frames)
        hub_board = str(Address(home.root.household_id, hub.id, Channel.PRESENCE))

        def hub_adverts() -> int:
            return sum(a == hub_board for a, _ in home.sim.wiretap.frames[sent_before:])

        assert await until(lambda: hub_adverts() >= 3)  # three rounds of the hub's own traffic
        to_phone = [
            a
            for a, _ in home.sim.wiretap.frames[sent_before:]
            if a.endswith(phone.id) and "/presence/" not in a
        ]
        assert to_phone == []
        assert hub.endpoint.peers.get(phone.id) is None and fridge.endpoint.peers.get(phone.id) is None
        with contextlib.suppress(BaseException):
            GATES["g1"].put_nowait(None)
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
        await stream.aclose()


async def test_stream_to_a_peer_fails_when_that_peer_is_revoked(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], admin=True)
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        stream, pending = await _started(fridge, hub, ["a", "b"], "g2")
        home.revoke(hub)
        with pytest.raises(PeerLostError, match=r"^revoked$"):
            await asyncio.wait_for(pending, 2)
        assert fridge.endpoint.peers.get(hub.id) is None
        await stream.aclose()


async def test_declared_presence_interval_is_capped(tmp_path: Path) -> None:
    settings = MeshSettings(
        presence_interval_s=0.05, coalesce_ms=0, limits=MeshLimits(max_presence_interval_s=0.1)
    )
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], settings=settings)
        fridge = home.device("fridge", settings=settings)
        hub.interval_s = 3600.0  # "believe I am alive for three hours"
        await home.start(hub, fridge)
        peer = fridge.endpoint.peers.get(hub.id)
        assert peer is not None and peer.presence.interval_s == 3600.0
        assert peer.alive(peer.seen + 0.29) and not peer.alive(peer.seen + 0.31)


# -- finding 4: forged departures -------------------------------------------------------------------------


async def test_unsigned_departure_is_checked_not_believed(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        stream, pending = await _started(fridge, hub, ["a"], "g3")
        home.sim.empty_board(hub.id)  # anyone allowed to write the topic can do this
        assert await until(lambda: fridge.node.dropped["UnconfirmedDeparture"] == 1)
        assert fridge.endpoint.peers.get(hub.id) is not None and not pending.done()
        GATES["g3"].put_nowait(None)
        chunk = await asyncio.wait_for(pending, 2)
        assert chunk.text == "a"
        await stream.aclose()


async def test_replayed_departure_of_an_earlier_link_is_ignored(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        old_notice = hub.node.seal_announcement(encode(Departure(session=hub.node.session, link=0)))
        home.sim.post_announcement(hub.id, old_notice)
        assert await until(lambda: fridge.endpoint.ignored["StaleDeparture"] == 1)
        assert fridge.endpoint.peers.get(hub.id) is not None
        forged = seal(
            fridge.identity,
            topic=str(Address(home.root.household_id, hub.id, Channel.PRESENCE)),
            counter=10**9,
            payload=encode(Departure(session=hub.node.session, link=hub.endpoint.link)),
            group_key=home.group,
        )
        home.sim.post_announcement(hub.id, forged)  # the fridge signs a departure for the hub
        assert await until(lambda: fridge.node.dropped["MalformedMessageError"] >= 1)
        assert fridge.endpoint.peers.get(hub.id) is not None


async def test_crash_fires_the_signed_departure_and_streams_fail_over(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        stream, pending = await _started(fridge, hub, ["a"], "g4")
        home.sim.crash(hub.id)
        with pytest.raises(PeerLostError, match=r"^hub left the mesh$"):
            await asyncio.wait_for(pending, 2)
        assert fridge.endpoint.peers.get(hub.id) is None
        await stream.aclose()


async def test_a_requester_that_crashed_is_no_longer_served(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        stream, pending = await _started(fridge, hub, ["a"], "g7")
        home.sim.crash(fridge.id)  # its signed departure reaches the hub
        assert await until(lambda: hub.endpoint.queue_depth == 0)
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
        await stream.aclose()


def test_embedded_broker_refuses_a_non_loopback_address() -> None:
    from edge_agent.config import MeshSection
    from edge_agent.mesh.broker import EmbeddedBroker

    with pytest.raises(ValueError, match=re.escape("only binds loopback, not '0.0.0.0'")):
        EmbeddedBroker("0.0.0.0", 1883)
    with pytest.raises(ValidationError, match="only listens on loopback"):
        MeshSection(embedded_broker=True, broker="mqtt://192.168.1.5:1883")


# -- finding 5: self-chosen capabilities ------------------------------------------------------------------


def test_offers_must_be_finite_and_bounded() -> None:
    for bad in (float("inf"), float("nan"), 1e12):
        with pytest.raises(ValidationError):
            Offer(task="generate", pack="x", rate=bad, first_ms=1)
    with pytest.raises(ValidationError):
        Offer.model_validate_json('{"task": "generate", "pack": "x", "rate": Infinity, "first_ms": 0}')


async def test_device_class_comes_from_the_certificate_and_measured_speed_wins(tmp_path: Path) -> None:
    from edge_agent.client.schemas import GenerateRequest
    from edge_agent.models.selection import Plan
    from edge_agent.router import Router
    from edge_agent.router_settings import RouterSettings

    async with household(tmp_path) as home:
        liar = home.device(
            "plug",
            serves=["generate"],
            device_class="appliance",
            offers=[Offer(task="generate", pack="x", rate=100_000, first_ms=0)],
        )
        hub = home.device("hub", serves=["generate"], device_class="hub")
        fridge = home.device("fridge")
        await home.start(liar, hub, fridge)
        router = Router(
            plan=Plan(profile_id="x", budget_mb=0),
            policy=RouterSettings(peer_classes=["hub"]),
            endpoint=fridge.endpoint,
        )
        decision = router.decide("generate", GenerateRequest.from_prompt("hi", max_tokens=10))
        assert [c.name for c in decision.ranked] == ["hub"]
        assert any(c.name == "plug" and "class appliance" in (c.excluded or "") for c in decision.excluded)
        # Without the class filter the liar's claim ranks it first, until its real speed is measured.
        router.policy = RouterSettings()
        assert (
            router.decide("generate", GenerateRequest.from_prompt("hi", max_tokens=10)).ranked[0].name
            == "plug"
        )
        fridge.endpoint.peers.succeeded(liar.id, units=10, seconds=10.0)  # 1 token/s observed
        assert (
            router.decide("generate", GenerateRequest.from_prompt("hi", max_tokens=10)).ranked[0].name
            == "hub"
        )


# -- finding 6 and 8: translation memory ------------------------------------------------------------------


def _memory_pair(home, asker, answerer, **kw):  # type: ignore[no-untyped-def]
    asker.memory = answerer.memory = True
    mem_a, mem_b = TranslationMemory(), TranslationMemory()
    return MemoryExchange(asker.endpoint, mem_a), MemoryExchange(answerer.endpoint, mem_b)


async def test_memory_entries_only_from_members_that_serve_translate(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["translate"])
        plug = home.device("plug", serves=["embed"])  # a member, but not a translator
        car = home.device("car")
        ask, answer = _memory_pair(home, car, hub)
        await home.start(hub, plug, car)
        good = make_entry(hub.identity.signing_key, hub.id, "en-pt", "Hello.", "Olá.", "m")
        poisoned = make_entry(plug.identity.signing_key, plug.id, "en-pt", "Bye.", "Compre já!", "m")
        future = make_entry(
            hub.identity.signing_key, hub.id, "en-pt", "Later.", "Mais tarde.", "m", now=time.time() + 300
        )
        for e in (good, poisoned, future):
            answer.memory._entries[digest("en-pt", e.source)] = e  # as if cached earlier
            answer.memory._salted[digest("en-pt", e.source, answer.memory.salt)] = digest("en-pt", e.source)
        wanted = {ask.memory.key("en-pt", s): s for s in ("Hello.", "Bye.", "Later.")}
        found = await ask.ask("en-pt", wanted, 1.0)
        assert [e.source for e in found.values()] == ["Hello."]
        # A tampered entry arriving in an answer is refused and counted.
        tampered = good.model_copy(update={"translation": "Compre já!"})
        assert ask._verified("en-pt", wanted, [tampered]) == {}
        assert car.node.dropped["MemoryForged"] == 1
        assert not TranslationMemory().fresh(future)
        # Revoking the hub drops what it produced, here and in every cache that held it.
        ask.memory.put(good)
        home.revoke(hub)
        assert ask.memory.get("en-pt", "Hello.") is None and answer.memory.get("en-pt", "Hello.") is None


async def test_memory_lookups_follow_routing_policy_and_use_a_secret_salt(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["translate"])
        car = home.device("car")
        ask, _ = _memory_pair(home, car, hub)
        await home.start(hub, car)
        before = len(home.sim.wiretap.frames)
        got = await ask.ask("en-pt", {ask.memory.key("en-pt", "Hi."): "Hi."}, 0.5, allowed=lambda p: False)
        assert got == {}
        assert [a for a, _ in home.sim.wiretap.frames[before:] if f"/req/{hub.id}" in a] == []
        # The digest is keyed by a group-key secret, not the household id that every topic shows.
        assert ask.memory.salt == salt_for(home.group)
        assert ask.memory.key("en-pt", "Hi.") != digest("en-pt", "Hi.", bytes.fromhex(home.root.household_id))


def test_the_service_maps_routing_policy_onto_memory_lookups() -> None:
    from types import SimpleNamespace

    from edge_agent.config import AgentConfig
    from edge_agent.service import MeshService

    hub, plug = SimpleNamespace(device_class="hub"), SimpleNamespace(device_class="appliance")

    def allowed(routing: dict[str, object], peer: object) -> bool:
        fake = SimpleNamespace(config=AgentConfig.model_validate({"routing": routing}))
        return bool(MeshService._may_see_text(fake, peer))  # type: ignore[arg-type]

    assert allowed({}, hub) and allowed({}, plug)
    assert not allowed({"mode": "local-only"}, hub)
    assert not allowed({"never_offload": ["translate"]}, hub)
    assert allowed({"peer_classes": ["hub"]}, hub) and not allowed({"peer_classes": ["hub"]}, plug)


# -- finding 7: token-length side channel -----------------------------------------------------------------


def test_payloads_are_padded_to_buckets() -> None:
    sizes = {len(encode(Chunk(id="0" * 32, seq=1, text="x" * n), 256)) for n in range(0, 100)}
    assert sizes == {256}
    assert padded_size(5000, 256) == 8192 and padded_size(300, 256) == 512
    assert decode(encode(Chunk(id="0" * 32, seq=1, text="hé"), 256)).text == "hé"  # type: ignore[union-attr]


async def test_tokens_produced_together_travel_in_one_padded_frame(tmp_path: Path) -> None:
    settings = MeshSettings(presence_interval_s=0.05, coalesce_ms=50)
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], settings=settings)
        fridge = home.device("fridge", settings=settings)
        await home.start(hub, fridge)
        before = len(home.sim.wiretap.frames)
        chunks = await _collect(_stream(fridge, hub, ["a", "bbbbbbbbbbbbbbbb", "c", "dd"]))
        assert "".join(c.text for c in chunks) == "abbbbbbbbbbbbbbbbcdd"
        frames = [f for a, f in home.sim.wiretap.frames[before:] if f"/resp/{fridge.id}" in a]
        # Accepted + at most a couple of merged chunks, all of one size.
        assert len(frames) <= 3 and len({len(f) for f in frames}) == 1


# -- finding 9: nothing sealed before a restart opens after it --------------------------------------------


async def test_a_message_accepted_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        address, frame = _sealed_request(home, fridge, hub)
        hub.node.opener.open(frame, f"{address}#{hub.node.session}")  # accepted once...
        # ...and the agent crashes before its replay window reaches the disk.
        from edge_agent.mesh.node import MeshNode

        restarted = MeshNode(
            hub.identity, hub.node.membership, tmp_path / "hub", group_keys=GroupKeys(home.group, 0, {})
        )
        with pytest.raises(ReplayError, match="sealed for another run of this device"):
            restarted.opener.open(frame, f"{address}#{restarted.session}")
        assert restarted.opener.replay._windows == {}


# -- finding 10: resource exhaustion by members -----------------------------------------------------------


def test_reorder_buffer_is_bounded() -> None:
    limits = MeshLimits(max_reorder_chunks=4, max_reorder_bytes=1 << 20)
    r = StreamReassembler(limits)
    for seq in range(1, 5):
        assert r.push(Chunk(id="0" * 32, seq=seq, text="x")) == []
    with pytest.raises(StreamBrokenError, match="stream gap at chunk 0: 4 later chunks"):
        r.push(Chunk(id="0" * 32, seq=5, text="x"))
    assert len(r.early) == 4  # nothing more was buffered
    big = StreamReassembler(MeshLimits(max_reorder_bytes=4096))
    with pytest.raises(StreamBrokenError):
        big.push(Chunk(id="0" * 32, seq=3, text="y" * 2000))
    assert [c.seq for c in r.push(Chunk(id="0" * 32, seq=0, text="x"))] == [0, 1, 2, 3, 4]


def test_a_stream_that_outruns_its_reader_breaks_instead_of_growing() -> None:
    from edge_agent.mesh.streams import OpenStream as _Stream

    limits = MeshLimits(max_stream_queue=16)
    stream = _Stream("a" * 32, StreamReassembler(limits))
    for seq in range(16):
        stream.deliver(Chunk(id="0" * 32, seq=seq, text="x"), limits.max_stream_queue)
    stream.deliver(Chunk(id="0" * 32, seq=16, text="x"), limits.max_stream_queue)
    assert stream.queue.qsize() == 17 and stream.broken  # 16 chunks, then the error, then nothing
    last = [stream.queue.get_nowait() for _ in range(17)][-1]
    assert isinstance(last, StreamBrokenError) and "outran its reader (16 queued)" in str(last)
    stream.deliver(Chunk(id="0" * 32, seq=17, text="x"), limits.max_stream_queue)
    assert stream.queue.empty()


async def test_one_requester_cannot_take_every_serving_slot(tmp_path: Path) -> None:
    settings = MeshSettings(
        presence_interval_s=0.05,
        coalesce_ms=0,
        limits=MeshLimits(max_requests_per_requester=2, max_concurrent_requests=8),
    )
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], settings=settings)
        greedy = home.device("greedy", settings=settings)
        polite = home.device("polite", settings=settings)
        await home.start(hub, greedy, polite)
        GATES["g5"] = asyncio.Queue()
        streams = [_stream(greedy, hub, ["a"], gate="g5") for _ in range(3)]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        from edge_agent.errors import PeerRefusedError

        done, _ = await asyncio.wait(firsts, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        refused = [f for f in done if isinstance(f.exception(), PeerRefusedError)]
        assert len(refused) == 1 and "2 of your requests are already in progress" in str(
            refused[0].exception()
        )
        assert hub.endpoint.queue_depth == 2
        ok = await _collect(_stream(polite, hub, ["b"]))  # another requester is still served
        assert [c.text for c in ok] == ["b", ""]
        for _ in range(4):
            GATES["g5"].put_nowait(None)
        for s, f in zip(streams, firsts, strict=True):
            with contextlib.suppress(BaseException):
                await f
            await s.aclose()


async def test_a_stream_abandoned_while_our_link_was_down_is_cancelled_on_reconnect(tmp_path: Path) -> None:
    """Otherwise the peer serves it to the end, holding one of our slots (and its engine) for nothing."""
    from edge_agent.errors import LinkDownError

    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        stream, pending = await _started(fridge, hub, ["a", "b"], "g6")
        home.sim.sever(fridge.id)  # our own link drops (the hub does not hear of it)
        with pytest.raises(LinkDownError):
            await asyncio.wait_for(pending, 2)
        await stream.aclose()  # the router gives up on it (and resumes elsewhere)
        assert hub.endpoint.queue_depth == 1  # the cancel could not be sent yet
        assert await until(lambda: hub.endpoint.queue_depth == 0)  # sent as soon as the link is back
        assert not fridge.endpoint.exchanges.deferred_cancels


async def test_retained_frames_in_an_inbox_are_dropped(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        address, frame = _sealed_request(home, fridge, hub)
        home.sim.inject(address, frame, retained=True)
        assert await until(lambda: hub.node.dropped["RetainedInbox"] == 1)
        assert hub.node.opener.replay._windows.get(fridge.id) is None  # nothing was committed


def test_keepalive_demands_have_a_floor() -> None:
    from edge_agent.mesh.rpc import keepalive_every_s

    req = Request(
        id="0" * 32, task="generate", body={}, reply_session="0" * 16, deadline_ms=1000, stall_ms=50
    )
    assert keepalive_every_s(req, MeshLimits(min_stall_ms=600)) == pytest.approx(0.2)


# -- finding 12: internal errors stay internal; past group keys expire ------------------------------------


async def test_internal_failure_text_does_not_leak(tmp_path: Path) -> None:
    from edge_agent.errors import PeerRefusedError

    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        with pytest.raises(PeerRefusedError) as caught:
            await _collect(_stream(fridge, hub, [], fail=True))
        assert caught.value.code == "internal"
        assert "/etc/hearth" not in str(caught.value) and "internal error on the serving device" in str(
            caught.value
        )


def test_past_group_keys_are_forgotten_after_the_grace_period() -> None:
    ring = GroupKeys(b"k0" * 16, 0, {}, grace_s=100, max_past=2)
    ring.adopt(b"k1" * 16, 1, now=1000)
    ring.adopt(b"k2" * 16, 2, now=1050)
    assert set(ring.all()) == {0, 1, 2}
    assert ring.prune(now=1101) == [0] and set(ring.all()) == {1, 2}
    ring.adopt(b"k3" * 16, 3, now=1102)
    ring.adopt(b"k4" * 16, 4, now=1103)
    assert set(ring.past) == {2, 3}  # at most max_past past keys


def test_unknown_fields_are_kept_but_bounded() -> None:
    base = {"type": "ping", "nonce": 1, "reply_session": "0" * 16}
    newer = decode(json.dumps({**base, "priority": "high"}).encode())
    assert newer.model_extra == {"priority": "high"}  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="unknown fields"):
        decode(json.dumps({**base, **{f"f{i}": 1 for i in range(17)}}).encode())
    with pytest.raises(ValidationError, match="exceed 4096 bytes"):
        decode(json.dumps({**base, "blob": "x" * 5000}).encode())


def test_presence_rejects_non_finite_numbers() -> None:
    with pytest.raises(ValidationError):
        Presence.model_validate(
            {"certificate": {}, "session": "0" * 16, "link": 1, "profile": "x", "interval_s": float("inf")}
        )
