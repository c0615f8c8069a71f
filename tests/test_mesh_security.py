"""Identity, household certificates and the envelope: every attack in the table is refused."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from edge_agent.errors import (
    ForgedMessageError,
    IdentityError,
    MalformedMessageError,
    NotAMemberError,
    PeerError,
    ReplayError,
)
from edge_agent.mesh.envelope import EnvelopeOpener, seal
from edge_agent.mesh.household import HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.replay import ReplayGuard, SendCounter

CANARY = b"CANARY-7f3e-do-not-leak"


@dataclass
class Home:
    root: HouseholdRoot
    hub: DeviceIdentity
    fridge: DeviceIdentity
    membership: Membership  # the hub's view

    def opener(self, **kw: object) -> EnvelopeOpener:
        return EnvelopeOpener(self.hub, self.membership, **kw)  # type: ignore[arg-type]

    def from_fridge(
        self, payload: bytes = b"hello", counter: int = 1, topic: str = "hearth/h/req/hub", **kw: object
    ) -> bytes:
        return seal(
            self.fridge,
            topic=topic,
            counter=counter,
            payload=payload,
            recipient=self.membership.certs[self.hub.device_id],
            **kw,
        )  # type: ignore[arg-type]


@pytest.fixture
def home() -> Home:
    root = HouseholdRoot(SigningKey.generate())
    hub, fridge = DeviceIdentity.generate(), DeviceIdentity.generate()
    m = Membership(root.key.verify_key)
    m.add_certificate(
        root.issue(hub, name="hub", profile="hub", requests=[], serves=["generate"], admin=True)
    )
    m.add_certificate(
        root.issue(fridge, name="fridge", profile="fridge-panel", requests=["generate"], serves=[])
    )
    return Home(root, hub, fridge, m)


# -- identity -------------------------------------------------------------------------------------------


def test_identity_is_created_once_and_stored_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "identity" / "device.json"
    first = DeviceIdentity.load_or_create(path)
    assert DeviceIdentity.load_or_create(path).device_id == first.device_id
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match=r"accessible by other users \(mode 0o644\)"):
        DeviceIdentity.load(path)


# -- certificates ---------------------------------------------------------------------------------------


def test_forged_foreign_expired_and_revoked_certificates_are_refused(home: Home) -> None:
    cert = home.membership.certs[home.fridge.device_id]
    promoted = cert.model_copy(update={"admin": True})  # edited after signing
    with pytest.raises(NotAMemberError, match="signature does not verify"):
        Membership(home.root.key.verify_key).add_certificate(promoted)
    other = HouseholdRoot(SigningKey.generate())
    with pytest.raises(NotAMemberError, match="another household"):
        home.membership.add_certificate(
            other.issue(DeviceIdentity.generate(), name="x", profile="hub", requests=[], serves=[])
        )
    later = datetime.now(UTC) + timedelta(days=400)
    with pytest.raises(NotAMemberError, match="not valid now"):
        home.membership.member(home.fridge.device_id, now=later)
    crl1 = home.root.revoke(home.fridge.device_id)
    assert home.membership.apply_revocations(crl1)
    with pytest.raises(NotAMemberError, match="has been revoked"):
        home.membership.member(home.fridge.device_id)
    stale = crl1.model_copy(update={"version": 0, "revoked": []}).signed_by(home.root.key)
    assert not home.membership.apply_revocations(stale)  # no rollback to an older list
    assert home.fridge.device_id in home.membership.revoked


# -- envelopes ------------------------------------------------------------------------------------------


def test_round_trip_and_the_broker_sees_only_ciphertext(home: Home) -> None:
    frame = home.from_fridge(CANARY)
    assert CANARY not in frame
    opened = home.opener().open(frame, "hearth/h/req/hub")
    assert opened.payload == CANARY and opened.sender.name == "fridge"


def test_group_messages_need_the_epoch_key(home: Home) -> None:
    key = os.urandom(32)
    frame = seal(
        home.fridge, topic="hearth/h/presence", counter=5, payload=b"present", group_key=key, epoch=3
    )
    assert home.opener(group_keys={3: key}).open(frame, "hearth/h/presence").payload == b"present"
    with pytest.raises(ForgedMessageError, match="no household group key for epoch 3"):
        home.opener(group_keys={2: key}).open(frame, "hearth/h/presence")


@dataclass(frozen=True)
class Attack:
    name: str
    error: type[PeerError]
    match: str


def _flip(frame: bytes, index: int) -> bytes:
    b = bytearray(frame)
    b[index] ^= 0x01
    return bytes(b)


ATTACKS = [
    Attack("tampered ciphertext", ForgedMessageError, "bad signature"),
    Attack("tampered counter", ForgedMessageError, "bad signature"),
    Attack("tampered signature", ForgedMessageError, "bad signature"),
    Attack("unsigned (zero signature)", ForgedMessageError, "bad signature"),
    Attack("re-signed by a non-member", NotAMemberError, "not a known household member"),
    Attack("wrong topic", ForgedMessageError, "arrived on"),
    Attack("replayed", ReplayError, "already received"),
    Attack(
        "stale timestamp",
        ReplayError,
        r"timestamped \d+ s behind this device.s clock, outside the 60 s freshness window",
    ),
    Attack("oversized", MalformedMessageError, "oversized frame"),
    Attack("truncated", MalformedMessageError, "truncated frame"),
    Attack("not for me", MalformedMessageError, "not to this device"),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attacks_are_dropped_with_the_exact_reason(home: Home, attack: Attack) -> None:
    opener = home.opener(max_frame=4096)
    topic = "hearth/h/req/hub"
    good = home.from_fridge(b"x" * 32, counter=10)
    frame = {
        "tampered ciphertext": lambda: _flip(good, len(good) - 70),
        "tampered counter": lambda: _flip(good, 43),
        "tampered signature": lambda: _flip(good, len(good) - 1),
        "unsigned (zero signature)": lambda: good[:-64] + bytes(64),
        "re-signed by a non-member": lambda: seal(
            DeviceIdentity.generate(),
            topic=topic,
            counter=10,
            payload=b"x",
            recipient=home.membership.certs[home.hub.device_id],
        ),
        "wrong topic": lambda: good,
        "replayed": lambda: good,
        "stale timestamp": lambda: home.from_fridge(counter=11, now_ms=0),
        "oversized": lambda: home.from_fridge(b"x" * 5000, counter=12),
        "truncated": lambda: good[:40],
        "not for me": lambda: seal(
            home.fridge,
            topic=topic,
            counter=13,
            payload=b"x",
            recipient=home.membership.certs[home.fridge.device_id],
        ),
    }[attack.name]()
    if attack.name == "replayed":
        opener.open(good, topic)
    before = dict(opener.replay._windows)
    with pytest.raises(attack.error, match=attack.match):
        opener.open(frame, "hearth/h/other" if attack.name == "wrong topic" else topic)
    assert opener.replay._windows == before  # a refused message never advances the window


def test_revoked_sender_is_refused_even_with_a_valid_signature(home: Home) -> None:
    frame = home.from_fridge()
    home.membership.apply_revocations(home.root.revoke(home.fridge.device_id))
    with pytest.raises(NotAMemberError, match="revoked"):
        home.opener().open(frame, "hearth/h/req/hub")


def test_replay_window_survives_restart_and_handles_reordering(home: Home, tmp_path: Path) -> None:
    opener = home.opener()
    frames = {c: home.from_fridge(counter=c) for c in (100, 98, 99, 30, 200)}
    for c in (100, 98):
        opener.open(frames[c], "hearth/h/req/hub")
    opener.open(frames[99], "hearth/h/req/hub")  # late but new: accepted
    with pytest.raises(ReplayError, match="older than the replay window"):
        opener.open(frames[30], "hearth/h/req/hub")
    opener.replay.save(tmp_path / "replay.json")
    restarted = home.opener(replay=ReplayGuard.load(tmp_path / "replay.json"))
    for c in (98, 99, 100):
        with pytest.raises(ReplayError, match="already received"):
            restarted.open(frames[c], "hearth/h/req/hub")
    assert restarted.open(frames[200], "hearth/h/req/hub").payload == b"hello"


def test_huge_counter_jump_is_cheap(home: Home) -> None:
    guard = ReplayGuard()
    guard.commit("a" * 32, 5)
    guard.commit("a" * 32, 2**62)  # must not build a 2**62-bit integer
    with pytest.raises(ReplayError):
        guard.check("a" * 32, 5)


def test_send_counter_never_reuses_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "counter.json"
    first = SendCounter(path)
    used = [first.next() for _ in range(5000)]  # crosses a reservation block
    assert 1 <= used[0] <= 2**28 + 1 and used == sorted(set(used))
    again = SendCounter(path)  # "crash" and restart
    assert again.next() > used[-1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_peer_errors(data: bytes) -> None:
    root = HouseholdRoot(SigningKey.generate())
    me = DeviceIdentity.generate()
    opener = EnvelopeOpener(me, Membership(root.key.verify_key))
    for frame in (data, b"HE\x01\x00" + data):
        with pytest.raises(PeerError):
            opener.open(frame, "hearth/h/req/x")
