"""Hardening 2, the mesh core's holes (N0, N1b, N8): numbers and keys a member controls are bounded
where they are parsed, so none of them can raise anything but the refusal in a device's loop.

Each attack asserts the exact refusal, that trusted state (peer table, membership, replay windows) is
unchanged, and that the device keeps serving: a request through it still gets its answer, and its
loops were never restarted (nothing reached the supervisor unplanned).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from nacl.public import PrivateKey, PublicKey
from pydantic import ValidationError

from edge_agent.errors import ForgedMessageError, ReplayError
from edge_agent.mesh.envelope import MAX_TIMESTAMP_MS, EnvelopeHeader, seal
from edge_agent.mesh.household import DeviceCertificate, usable_box_key
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Address, Channel
from edge_agent.mesh.pairing import DeviceRequest
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import MAX_QUEUE, Offer, Presence, encode
from edge_agent.router import Router
from tests.support.meshsim import Device, SimHousehold, household, presence_of, until

# A point of order 8 on Curve25519 (libsodium's blocklist): every shared secret with it is zero.
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
YEAR_10000_MS = 253_402_300_800_000


async def _still_serving(home: SimHousehold, requester: Device, server: Device) -> None:
    """A full request/answer between the two, and no loop of either restarted."""
    peer = requester.endpoint.peers.get(server.id)
    assert peer is not None
    chunks = [
        c
        async for c in requester.endpoint.stream(
            peer, "generate", {"words": ["still", "here"]}, deadline_s=5, stall_s=2
        )
    ]
    assert [c.text for c in chunks] == ["still", "here", ""]
    for dev in (requester, server):
        health = dev.endpoint.supervisor.report()
        assert health.restarts == 0, health


def _advert(dev: Device, *, now_ms: int | None = None, payload: bytes | None = None) -> bytes:
    """``dev``'s presence, sealed as its node would but at the time and with the bytes a test picks."""
    board = Address(dev.node.household, dev.id, Channel.PRESENCE)
    return seal(
        dev.identity,
        topic=str(board),
        counter=dev.node.counter.next(),
        payload=payload if payload is not None else encode(presence_of(dev)),
        group_key=dev.node.group.key,
        epoch=dev.node.group.epoch,
        now_ms=now_ms,
    )


# -- N0: a retained presence from the year 10000 ---------------------------------------------------------


async def test_n0_a_timestamp_past_year_9999_is_refused_at_parse_and_kills_nothing(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        mallory = home.device("mallory")
        await home.start(hub, fridge, mallory)
        await mallory.endpoint.close(clean=False)
        before = dict(fridge.node.dropped)
        peers_before = {p.device_id for p in fridge.endpoint.peers.all()}
        # Retained on the board: every device gets it now, and again on every reconnect.
        home.sim.post_announcement(mallory.id, _advert(mallory, now_ms=YEAR_10000_MS))
        assert await until(
            lambda: fridge.node.dropped["MalformedMessageError"] == before.get("MalformedMessageError", 0) + 1
        )
        home.sim.sever(fridge.id)  # the link blips: the retained frame arrives again, and is dropped again
        assert await until(
            lambda: fridge.node.dropped["MalformedMessageError"] == before.get("MalformedMessageError", 0) + 2
        )
        assert await until(fridge.endpoint.connected.is_set)
        assert {p.device_id for p in fridge.endpoint.peers.all()} == peers_before
        await _still_serving(home, fridge, hub)


def test_n0_the_exact_refusals() -> None:
    ident = DeviceIdentity.generate()
    with pytest.raises(ValidationError, match="less than or equal to 253402300799999"):
        EnvelopeHeader(
            version=1, kind=1, sender=ident.device_id, recipient="0" * 32, counter=1,
            timestamp_ms=MAX_TIMESTAMP_MS + 1, epoch=0, topic="t",
        )  # fmt: skip


async def test_n0_a_far_but_formattable_timestamp_is_stale_and_never_formatted(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        now_ms = int(time.time() * 1000)
        header = EnvelopeHeader(
            version=1, kind=1, sender=hub.id, recipient="0" * 32, counter=1,
            timestamp_ms=MAX_TIMESTAMP_MS, epoch=0, topic="t",
        )  # fmt: skip
        ahead_s = (MAX_TIMESTAMP_MS - now_ms) / 1000
        with pytest.raises(ReplayError) as refused:
            fridge.node.opener.check_fresh(header, now_ms)
        assert str(refused.value) == (
            f"message from {hub.id} is timestamped {ahead_s:.0f} s ahead of this device's clock, "
            "outside the 60 s freshness window"
        )
        seen = fridge.endpoint.peers.get(hub.id)
        assert seen is not None
        dropped = fridge.node.dropped["ReplayError"]
        home.sim.post_announcement(hub.id, _advert(hub, now_ms=MAX_TIMESTAMP_MS))  # live, not retained
        assert await until(lambda: fridge.node.dropped["ReplayError"] == dropped + 1)
        assert fridge.endpoint.peers.get(hub.id) is seen and seen.presence.session == hub.node.session
        await _still_serving(home, fridge, hub)


# -- N1b: a certified low-order box key -------------------------------------------------------------------


def test_n1b_a_low_order_box_key_is_never_certified(tmp_path: Path) -> None:
    home = SimHousehold(tmp_path)
    ident = DeviceIdentity.generate()
    assert not usable_box_key(LOW_ORDER) and not usable_box_key(bytes(32))
    assert usable_box_key(bytes(PrivateKey.generate().public_key))
    with pytest.raises(ValidationError, match="box key is a low-order X25519 point"):
        home.root.issue(
            (ident.verify_key, PublicKey(LOW_ORDER)), name="evil", profile="hub", requests=[], serves=[]
        )
    with pytest.raises(ValidationError, match="box_key is a low-order X25519 point; refusing to certify it"):
        DeviceRequest(
            sign_key=bytes(ident.verify_key).hex(), box_key=LOW_ORDER.hex(), name="evil", profile="hub",
            requests=[], serves=[],
        )  # fmt: skip


async def test_n1b_a_stored_low_order_certificate_only_forges_its_own_frames(tmp_path: Path) -> None:
    """A certificate issued before the check (kept on disk, or signed by an old hub): its frames are
    refused as forged, never as a crypto library's RuntimeError in the receiver's loop."""
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        evil = DeviceIdentity.generate()
        good = home.root.issue(evil, name="evil", profile="hub", requests=["generate"], serves=[])
        bad = DeviceCertificate.model_construct(  # skips the validator, as an old build's would
            **{**good.model_dump(), "box_key": LOW_ORDER.hex(), "signature": ""}
        ).signed_by(home.root.key)
        hub.node.membership.certs[evil.device_id] = bad
        with pytest.raises(ValidationError, match="low-order X25519 point"):
            DeviceCertificate.model_validate_json(bad.model_dump_json())  # as loaded from disk or presence
        address = Address(home.root.household_id, hub.id, Channel.REQUESTS)
        frame = seal(
            evil, topic=f"{address}#{hub.node.session}", counter=1, payload=b"{}", recipient=hub.certificate
        )  # sealed with a real key pair: the receiver's agreement with the certified (bad) key fails
        with pytest.raises(ForgedMessageError, match=f"device {evil.device_id} has an unusable box key"):
            hub.node.opener.open(frame, f"{address}#{hub.node.session}")
        forged = hub.node.dropped["ForgedMessageError"]
        home.sim.inject(address, frame)
        assert await until(lambda: hub.node.dropped["ForgedMessageError"] == forged + 1)
        assert hub.node.opener.replay._windows.get(evil.device_id) is None
        await _still_serving(home, fridge, hub)


# -- N8: a queue depth of 10**400 -------------------------------------------------------------------------


async def test_n8_an_unbounded_presence_number_is_refused_and_routing_goes_on(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        mallory = home.device("mallory", serves=["generate"])
        await home.start(hub, fridge, mallory)
        raw = json.loads(encode(presence_of(mallory)))
        raw["queue_depth"] = 10**400  # JSON has no limit; Python's int parsing has one, pydantic another
        payload = json.dumps(raw).encode()
        with pytest.raises(ValidationError):
            Presence.model_validate_json(payload)
        known = fridge.endpoint.peers.get(mallory.id)
        assert known is not None and known.presence.queue_depth == 0
        invalid = fridge.node.dropped["InvalidMessage"]
        home.sim.post_announcement(mallory.id, _advert(mallory, payload=payload))
        assert await until(lambda: fridge.node.dropped["InvalidMessage"] == invalid + 1)
        assert fridge.endpoint.peers.get(mallory.id) is known and known.presence.queue_depth == 0
        await _still_serving(home, fridge, hub)


def test_n8_estimates_are_clamped_and_policy_comes_before_them() -> None:
    """Even a presence that got past the wire bounds (an older build's table) cannot overflow the
    estimate, and a peer the policy excludes is never estimated at all."""
    from nacl.signing import SigningKey

    from edge_agent.client.schemas import GenerateRequest
    from edge_agent.mesh.household import HouseholdRoot
    from edge_agent.models.selection import Plan
    from edge_agent.router_settings import RouterSettings

    root = HouseholdRoot(SigningKey.generate())
    cert = root.issue(DeviceIdentity.generate(), name="big", profile="hub", requests=[], serves=["generate"])
    offer = Offer(task="generate", pack="x@int4", rate=50.0, first_ms=10.0)
    huge = Presence.model_construct(
        **{**Presence(certificate=cert, session="0" * 16, link=1, profile="hub", offers=[offer],
                      interval_s=1.0).__dict__, "queue_depth": 10**400}
    )  # fmt: skip
    peer = Peer(cert, huge, time.monotonic())

    class Directory:
        def known(self) -> list[Peer]:
            return [peer]

        def is_member(self, device_id: str) -> bool:
            return True

        def own_requests(self) -> list[str]:
            return ["generate"]

    request = GenerateRequest.from_prompt("x", max_tokens=8)
    router = Router(
        plan=Plan(profile_id="hub", budget_mb=1024), policy=RouterSettings(), endpoint=Directory()
    )  # type: ignore[arg-type]
    decision = router.decide("generate", request, deadline_s=3600 * 24 * 7)
    (cand,) = decision.ranked + decision.excluded
    assert cand.expected_ms < 1e9 and f"queue {MAX_QUEUE}" in cand.detail
    local_only = Router(plan=Plan(profile_id="hub", budget_mb=1024), policy=RouterSettings(mode="local-only"),
                        endpoint=Directory())  # type: ignore[arg-type]  # fmt: skip
    (excluded,) = local_only.decide("generate", request).excluded
    assert excluded.excluded == "policy: local-only" and excluded.estimate == "not estimated"
