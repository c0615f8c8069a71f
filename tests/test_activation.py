"""Activating a received pack on real weights: the health check decides; a failure rolls back to the
previous pack, which keeps serving; a bad staging is refused before anything changes; every outcome
is a signed install report."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge_agent.client.schemas import TranslateRequest
from edge_agent.engines.translate import TranslateEngine
from edge_agent.mesh.household import household_id_for
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.store import PackStore
from edge_agent.sync.keys import UpdateKey, UpdateKeySet, sign_key_set
from edge_agent.sync.manifest import HealthCheck, UpdateManifest
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.signing import key_id, open_envelope, verify_threshold
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.trust import TrustedUpdates
from edge_agent.task_specs import REGISTRY
from edge_agent.updates.activation import INSTALL_REPORT_TYPE, InstallReport, activate
from edge_agent.updates.health import probe

PACK = "bergamot-tiny11-en-pt@int8"
SENTENCE = "The fridge door is open."


class Device:
    """A device with its own pack store (holding sequence 1 of the pack) and update state."""

    def __init__(self, tmp: Path, real: PackStore) -> None:
        self.root = SigningKey.generate()
        self.publisher = SigningKey.generate()
        self.identity = SigningKey.generate()
        self.household = household_id_for(self.root.verify_key)
        self.store = PackStore(tmp / "store")
        source = real.get(PACK)
        self.store.install(source.path, source.manifest)
        self.source = source
        self.updates = UpdateStore(tmp / "mesh")
        self.trusted = TrustedUpdates(
            self.root.verify_key, self.household, installed={"bergamot-tiny11-en-pt": 1}
        )
        now = datetime.now(UTC)
        key_set = UpdateKeySet(
            household_id=self.household, version=1, threshold=1,
            keys=[UpdateKey.of(self.publisher.verify_key, "hub")],
            issued_at=now, expires_at=now + timedelta(days=30),
        )  # fmt: skip
        self.trusted.update_key_set(sign_key_set(key_set, self.root))
        self.tmp = tmp

    def update(self, sequence: int, health: HealthCheck | None) -> tuple[UpdateManifest, bytes, Path]:
        """Sequence N of the pack as it would arrive: a signed manifest and the files staged."""
        files = [MANIFEST_NAME, *(f.path for f in self.source.manifest.files)]
        now = datetime.now(UTC)
        manifest = build_manifest(
            self.source.path, files, household_id=self.household, name=self.source.manifest.name,
            pack_id=PACK, task="translate", sequence=sequence, device_classes=["appliance"],
            issued_at=now, expires_at=now + timedelta(days=7), chunk_size=64 << 10, health=health,
        )  # fmt: skip
        envelope = sign_manifest(manifest, self.publisher)
        verified = self.trusted.verify_manifest(envelope, "appliance")
        staged = self.tmp / f"staged-{sequence}"
        staged.mkdir()
        for rel in files:
            shutil.copyfile(self.source.path / rel, staged / rel)
        return verified, envelope, staged

    def activate(self, manifest: UpdateManifest, envelope: bytes, staged: Path):  # type: ignore[no-untyped-def]
        return activate(
            manifest, envelope, staged, store=self.store, updates=self.updates, trusted=self.trusted,
            identity=self.identity, device_id="d" * 32,
        )  # fmt: skip


@pytest.fixture
def device(tmp_path: Path, store: PackStore) -> Device:
    return Device(tmp_path, store)


def report_of(result, identity: SigningKey) -> InstallReport:  # type: ignore[no-untyped-def]
    payload, signatures = open_envelope(
        result.signed_report, INSTALL_REPORT_TYPE, max_bytes=1 << 16, what="report"
    )
    keys = {key_id(identity.verify_key): identity.verify_key}
    verify_threshold(INSTALL_REPORT_TYPE, payload, signatures, keys, 1, what="report")
    return InstallReport.model_validate_json(payload)


def recorded(device: Device) -> HealthCheck:
    """What the publisher's copy answers, recorded as `hearth models publish --health` does."""
    src = device.source
    expect = probe(src.path, "translate", src.manifest.task_info, SENTENCE, "en-pt")
    return HealthCheck(input=SENTENCE, expect=expect, pair="en-pt")


def test_a_healthy_update_is_activated_and_serves(device: Device) -> None:
    manifest, envelope, staged = device.update(2, recorded(device))
    result = device.activate(manifest, envelope, staged)
    assert result.activated and result.pack is not None
    assert report_of(result, device.identity).result == "activated"
    assert device.trusted.installed == {"bergamot-tiny11-en-pt": 2}
    assert device.updates.manifest_path(manifest).read_bytes() == envelope
    assert (device.store.previous / PACK / MANIFEST_NAME).is_file()  # the previous pack is kept
    engine = TranslateEngine(result.pack.path, result.pack.manifest.task_info, 1)
    out = list(engine.run(TranslateRequest(texts=[SENTENCE], source="en", target="pt")))
    assert out[-1].translations[0] == recorded(device).expect


def test_a_failed_health_check_rolls_back_and_the_previous_pack_keeps_serving(device: Device) -> None:
    manifest, envelope, staged = device.update(2, recorded(device))
    assert device.activate(manifest, envelope, staged).activated
    before = device.store.get(PACK).path.stat().st_ino
    bad = HealthCheck(input=SENTENCE, expect="A porta da geladeira está fechada.", pair="en-pt")
    manifest3, envelope3, staged3 = device.update(3, bad)
    result = device.activate(manifest3, envelope3, staged3)
    report = report_of(result, device.identity)
    assert report.result == "rolled-back" and "the publisher recorded" in report.reason
    assert device.trusted.installed == {"bergamot-tiny11-en-pt": 2}
    assert not device.updates.manifest_path(manifest3).exists()
    assert result.pack is not None and result.pack.path.stat().st_ino == before  # sequence 2's directory
    engine = TranslateEngine(result.pack.path, result.pack.manifest.task_info, 1)
    assert list(engine.run(TranslateRequest(texts=[SENTENCE], source="en", target="pt")))[-1].translations


@pytest.mark.parametrize("damage", ["extra file", "tampered file", "symlink"])
def test_a_bad_staging_is_refused_and_nothing_changes(device: Device, damage: str) -> None:
    manifest, envelope, staged = device.update(2, None)
    if damage == "extra file":
        (staged / "extra.onnx").write_bytes(b"x")
    elif damage == "tampered file":
        target = staged / manifest.files[1].path
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 1
        target.write_bytes(bytes(data))
    else:
        target = staged / manifest.files[1].path
        target.unlink()
        target.symlink_to(device.source.path / manifest.files[1].path)
    pack_dir = device.store.get(PACK).path
    before = (pack_dir.stat().st_ino, sorted(p.name for p in pack_dir.iterdir()))
    result = device.activate(manifest, envelope, staged)
    report = report_of(result, device.identity)
    assert report.result == "refused"
    assert {"extra file": "not in the signed manifest", "tampered file": "not the file the manifest signed",
            "symlink": "symbolic link"}[damage] in report.reason  # fmt: skip
    assert device.trusted.installed == {"bergamot-tiny11-en-pt": 1}
    assert (pack_dir.stat().st_ino, sorted(p.name for p in pack_dir.iterdir())) == before
    assert not device.store.previous.exists()


def test_a_pack_that_fails_its_quality_reference_on_this_cpu_rolls_back(
    device: Device, tmp_path: Path
) -> None:
    """The publisher's CPU is not this one: a signed, healthy-looking int8 pack whose recorded reference
    answers this CPU cannot reproduce is rolled back, and the previous pack keeps serving."""
    import json

    from edge_agent.models.pack import PackManifest
    from edge_agent.models.quality import QUALITY_FILE
    from edge_agent.models.store import InstalledPack, sha256_file

    manifest, envelope, staged = device.update(2, recorded(device))
    assert device.activate(manifest, envelope, staged).activated
    before = device.store.get(PACK).path.stat().st_ino
    odd = tmp_path / "publisher-copy"
    shutil.copytree(device.source.path, odd)
    ref = json.loads((odd / QUALITY_FILE).read_text())
    ref["cases"][0]["expect_tokens"] = [7, 7, 7, 7, 7, 0]  # what a saturating kernel might have recorded
    (odd / QUALITY_FILE).write_text(json.dumps(ref))
    pm = PackManifest.model_validate_json((odd / MANIFEST_NAME).read_text())
    files = [f.model_copy(update={"size": (odd / f.path).stat().st_size, "sha256": sha256_file(odd / f.path)})
             if f.path == QUALITY_FILE else f for f in pm.files]  # fmt: skip
    (odd / MANIFEST_NAME).write_text(pm.model_copy(update={"files": files}).model_dump_json())
    device.source = InstalledPack(PackManifest.model_validate_json((odd / MANIFEST_NAME).read_text()), odd)
    manifest3, envelope3, staged3 = device.update(3, recorded(device))  # its own health check passes
    result = device.activate(manifest3, envelope3, staged3)
    report = report_of(result, device.identity)
    assert report.result == "rolled-back"
    assert report.reason.startswith(
        "health check failed: quality gate on this CPU FAILED: worst agreement 0."
    )
    assert "(short), needs ≥ 0.9" in report.reason  # the float graphs agree fully: 1.00 less 0.10
    assert device.trusted.installed == {"bergamot-tiny11-en-pt": 2}
    assert not device.updates.manifest_path(manifest3).exists()
    assert result.pack is not None and result.pack.path.stat().st_ino == before
    engine = TranslateEngine(result.pack.path, result.pack.manifest.task_info, 1)
    assert list(engine.run(TranslateRequest(texts=[SENTENCE], source="en", target="pt")))[-1].translations


PROBED = {
    "generate": "smollm2-135m-instruct@int8",
    "embed": "all-minilm-l6-v2@int8",
    "translate": PACK,
    "transcribe": "whisper-tiny-en@int8",
}


def test_every_task_in_the_registry_has_a_health_probe() -> None:
    assert set(PROBED) == set(REGISTRY)
    assert all(spec.health is not None for spec in REGISTRY.values())


@pytest.mark.parametrize("task", sorted(PROBED))
def test_the_health_probe_runs_every_task_through_the_registry_and_repeats(
    store: PackStore, task: str
) -> None:
    """What a publisher records is what a receiver with the same pack gets again (transcribe included:
    its input seeds a fixed stretch of audio)."""
    pack = store.get(PROBED[task])
    pair = pack.manifest.task_info.get("pair")
    first = probe(pack.path, pack.manifest.task, pack.manifest.task_info, SENTENCE, pair)
    assert probe(pack.path, pack.manifest.task, pack.manifest.task_info, SENTENCE, pair) == first
    if task != "transcribe":  # noise may well transcribe to nothing; the other tasks always answer
        assert first
