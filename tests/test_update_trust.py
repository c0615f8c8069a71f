"""The update verifier under attack (python-tuf's attack names): every refusal has its own error, and
the trusted state (key set version, installed sequences) is exactly what it was before.

IO-free: bytes in, a fake clock, no network, no files.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from edge_agent.errors import (
    BelowThresholdError,
    ChunkDigestError,
    EndlessDataError,
    ExpiredUpdateError,
    MalformedUpdateError,
    RevokedUpdateKeyError,
    RollbackError,
    UnknownUpdateKeyError,
    UnsignedUpdateError,
    UpdateError,
    UpdateSignatureError,
    WrongDeviceClassError,
)
from edge_agent.mesh.household import household_id_for
from edge_agent.sync.describe import describe
from edge_agent.sync.digests import merkle_root
from edge_agent.sync.keys import UpdateKey, UpdateKeySet, sign_key_set
from edge_agent.sync.limits import MAX_MANIFEST_ENVELOPE_BYTES
from edge_agent.sync.manifest import MANIFEST_TYPE, UpdateManifest
from edge_agent.sync.signing import seal
from edge_agent.sync.trust import TrustedUpdates

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CHUNK = 16 << 10
FILES = {
    "model.onnx": bytes(i * 7919 % 251 for i in range(51200)),  # no two chunks alike
    "pack.json": b'{"name": "demo"}',
    "vocab.spm": b"v" * CHUNK,
}


@dataclass
class Household:
    """A household root, five update keys and a device's verifier, on a clock the test moves."""

    root: SigningKey = field(default_factory=SigningKey.generate)
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate() for _ in range(5)])
    clock: list[datetime] = field(default_factory=lambda: [NOW])

    def __post_init__(self) -> None:
        self.household_id = household_id_for(self.root.verify_key)
        self.device = TrustedUpdates(
            self.root.verify_key, self.household_id, installed={"demo": 3}, now=lambda: self.clock[0]
        )

    def key(self, i: int) -> UpdateKey:
        return UpdateKey.of(self.keys[i].verify_key, f"key-{i}")

    def key_set(self, idx: list[int], threshold: int, version: int = 1, **kw: Any) -> UpdateKeySet:
        fields = dict(
            household_id=self.household_id,
            version=version,
            threshold=threshold,
            keys=[self.key(i) for i in idx],
            issued_at=NOW - timedelta(days=1),
            expires_at=NOW + timedelta(days=365),
        )
        return UpdateKeySet.model_validate(fields | kw)

    def trust(self, key_set: UpdateKeySet) -> None:
        self.device.update_key_set(sign_key_set(key_set, self.root))

    def manifest(self, **kw: Any) -> UpdateManifest:
        files, chunks = describe([(p, io.BytesIO(b)) for p, b in FILES.items()], CHUNK)
        fields = dict(
            household_id=self.household_id,
            name="demo",
            pack_id="demo@int8",
            task="translate",
            device_classes=["hub", "appliance"],
            sequence=4,
            issued_at=NOW - timedelta(hours=1),
            expires_at=NOW + timedelta(days=30),
            chunk_size=CHUNK,
            total_size=sum(f.size for f in files),
            files=files,
            chunks=chunks,
            merkle_root=merkle_root([bytes.fromhex(c) for c in chunks]).hex(),
        )
        return UpdateManifest.model_validate(fields | kw)

    def signed(self, manifest: UpdateManifest, *signers: int) -> bytes:
        return seal(MANIFEST_TYPE, manifest.canonical(), [self.keys[i] for i in signers])

    def state(self) -> tuple[int | None, dict[str, int]]:
        return (self.device.key_set.version if self.device.key_set else None), dict(self.device.installed)


@pytest.fixture
def home() -> Household:
    h = Household()
    h.trust(h.key_set([0, 1, 2], threshold=2))
    return h


def refused(
    home: Household, data: bytes, error: type[UpdateError], match: str, device_class: str = "hub"
) -> None:
    before = home.state()
    with pytest.raises(error, match=match) as caught:
        home.device.verify_manifest(data, device_class)  # type: ignore[arg-type]
    assert type(caught.value) is error
    assert home.state() == before


def test_a_good_update_is_verified_and_only_activation_moves_the_sequence(home: Household) -> None:
    manifest = home.manifest()
    got = home.device.verify_manifest(home.signed(manifest, 0, 2), "appliance")
    assert got == manifest
    assert home.state() == (1, {"demo": 3})
    home.device.accept_installed(got)
    assert home.state() == (1, {"demo": 4})
    for i in range(len(manifest.chunks)):
        file, offset, length = manifest.chunk_location(i)
        home.device.verify_chunk(manifest, i, FILES[file.path][offset : offset + length])


def test_unsigned(home: Household) -> None:
    refused(home, home.signed(home.manifest()), UnsignedUpdateError, "manifest is not signed")


def test_wrong_key(home: Household) -> None:
    refused(
        home, home.signed(home.manifest(), 3, 4), UnknownUpdateKeyError, "keys this household does not list"
    )


def test_below_threshold(home: Household) -> None:
    refused(home, home.signed(home.manifest(), 1), BelowThresholdError, "1 valid of 2 required")


def test_one_key_signing_twice_counts_once(home: Household) -> None:
    refused(home, home.signed(home.manifest(), 1, 1), BelowThresholdError, "1 valid of 2 required")


def test_an_unlisted_signature_does_not_make_up_the_threshold(home: Household) -> None:
    refused(home, home.signed(home.manifest(), 0, 3), BelowThresholdError, "1 valid of 2 required")


def test_manifest_edited_after_signing(home: Household) -> None:
    envelope = json.loads(home.signed(home.manifest(), 0, 1))
    edited = json.loads(base64.b64decode(envelope["payload"]))
    edited["device_classes"] = ["hub", "appliance", "vehicle"]
    envelope["payload"] = base64.b64encode(json.dumps(edited).encode()).decode()
    refused(home, json.dumps(envelope).encode(), UpdateSignatureError, "edited after signing")


def test_rollback_to_an_older_sequence(home: Household) -> None:
    refused(
        home,
        home.signed(home.manifest(sequence=2), 0, 1),
        RollbackError,
        "older than the installed sequence 3",
    )


def test_replay_of_the_installed_sequence(home: Household) -> None:
    refused(home, home.signed(home.manifest(sequence=3), 0, 1), RollbackError, "installed sequence again")


def test_freeze_an_expired_manifest(home: Household) -> None:
    data = home.signed(home.manifest(), 0, 1)
    home.clock[0] = NOW + timedelta(days=31)
    refused(home, data, ExpiredUpdateError, "demo@int8 sequence 4 expired")


def test_freeze_an_expired_key_set(home: Household) -> None:
    data = home.signed(home.manifest(expires_at=NOW + timedelta(days=800)), 0, 1)
    home.clock[0] = NOW + timedelta(days=366)
    refused(home, data, ExpiredUpdateError, "update key set .* expired")


def test_wrong_device_class(home: Household) -> None:
    refused(home, home.signed(home.manifest(), 0, 1), WrongDeviceClassError, "not a vehicle", "vehicle")


def test_signed_but_inconsistent_manifest_is_refused_before_use(home: Household) -> None:
    good = home.manifest()
    bad = good.model_dump(mode="json") | {"merkle_root": "0" * 64}
    payload = json.dumps(bad, sort_keys=True, separators=(",", ":")).encode()
    data = seal(MANIFEST_TYPE, payload, [home.keys[0], home.keys[1]])
    refused(home, data, MalformedUpdateError, "do not hash to the merkle root")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a signed envelope"),
        (b"[1, 2]", "not a signed envelope"),
        (b'{"payload_type": "x", "payload": "!!", "signatures": []}', "not a signed envelope"),
        (b"{" + b" " * (5 << 20) + b"}", f"at most {MAX_MANIFEST_ENVELOPE_BYTES} are accepted"),
    ],
)
def test_garbage_is_malformed(home: Household, data: bytes, match: str) -> None:
    refused(home, data, MalformedUpdateError, match)


def test_a_key_set_cannot_pass_for_a_manifest(home: Household) -> None:
    refused(
        home,
        sign_key_set(home.key_set([3], 1, version=9), home.root),
        MalformedUpdateError,
        "not 'application/vnd",
    )


def test_mix_and_match_chunk_from_another_pack(home: Household) -> None:
    manifest = home.manifest()
    before = home.state()
    with pytest.raises(ChunkDigestError, match="chunk 1 of demo@int8"):
        home.device.verify_chunk(manifest, 1, FILES["model.onnx"][:CHUNK])  # chunk 0's bytes as chunk 1
    with pytest.raises(ChunkDigestError, match="chunk 0"):
        home.device.verify_chunk(manifest, 0, FILES["model.onnx"][: CHUNK - 1])  # short
    assert home.state() == before


def test_endless_data(home: Household) -> None:
    manifest = home.manifest()
    last_of_model = len(FILES["model.onnx"]) // CHUNK  # the model's short final chunk
    file, offset, length = manifest.chunk_location(last_of_model)
    assert file.path == "model.onnx" and length < CHUNK
    with pytest.raises(EndlessDataError, match=f"the manifest signed {length}"):
        home.device.verify_chunk(manifest, last_of_model, FILES["model.onnx"][offset:] + b"\x00" * 100)


# -- key sets ----------------------------------------------------------------------------------------


def test_key_set_not_signed_by_the_root_is_refused(home: Household) -> None:
    before = home.state()
    with pytest.raises(UnknownUpdateKeyError):
        home.device.update_key_set(sign_key_set(home.key_set([3], 1, version=2), home.keys[0]))
    assert home.state() == before


def test_key_set_rollback_is_refused(home: Household) -> None:
    home.trust(home.key_set([3], 1, version=2))
    before = home.state()
    with pytest.raises(RollbackError, match="version 1 is not above the trusted 2"):
        home.trust(home.key_set([0, 1, 2], threshold=2))
    assert home.state() == before == (2, {"demo": 3})


def test_key_set_of_another_household_is_refused(home: Household) -> None:
    other = Household()
    with pytest.raises(UnknownUpdateKeyError):  # signed by another root
        home.device.update_key_set(sign_key_set(other.key_set([0], 1, version=5), other.root))


def test_rotation_one_of_one(home: Household) -> None:
    h = Household()
    h.trust(h.key_set([0], 1))
    h.trust(h.key_set([0], 1).rotated([h.key(1)], 1, now=NOW))
    refused(h, h.signed(h.manifest(), 0), RevokedUpdateKeyError, "revoked key")
    assert h.device.verify_manifest(h.signed(h.manifest(), 1), "hub").sequence == 4


def test_rotation_two_of_three_replacing_one_key(home: Household) -> None:
    v1 = home.device.key_set
    assert v1 is not None and v1.threshold == 2
    home.trust(v1.rotated([home.key(0), home.key(1), home.key(3)], 2, now=NOW))  # key 2 out, key 3 in
    refused(
        home,
        home.signed(home.manifest(), 0, 2),
        RevokedUpdateKeyError,
        r"revoked key .*\(1 valid of 2 required\)",
    )
    assert home.device.verify_manifest(home.signed(home.manifest(), 0, 3), "hub").sequence == 4
    home.trust(home.device.key_set.rotated([home.key(0), home.key(1), home.key(3)], 3, now=NOW))  # type: ignore[union-attr]
    refused(home, home.signed(home.manifest(), 0, 3), BelowThresholdError, "2 valid of 3 required")


def test_a_key_set_with_an_impossible_threshold_does_not_validate(home: Household) -> None:
    with pytest.raises(ValueError, match="threshold 3 is more than the 2 keys"):
        home.key_set([0, 1], threshold=3)


# -- fuzz --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes_only_raise_update_errors(home: Household, data: bytes) -> None:
    before = home.state()
    with pytest.raises(UpdateError):
        home.device.verify_manifest(data, "hub")
    with pytest.raises(UpdateError):
        home.device.update_key_set(data)
    assert home.state() == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_fuzz_flipped_bytes_of_a_good_manifest_only_raise_update_errors(
    home: Household, position: int, flip: int
) -> None:
    good = bytearray(home.signed(home.manifest(), 0, 1))
    good[position % len(good)] ^= flip
    before = home.state()
    with contextlib.suppress(UpdateError):  # the only kind of error allowed out
        home.device.verify_manifest(bytes(good), "hub")
    assert home.state() == before
