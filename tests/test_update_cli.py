"""Update keys and publishing from the command line, as an operator does it: the hub lists key holders,
a holder publishes a real pack, a second holder co-signs (2 of 2), and a member verifies the result."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.rigs.meshkit import provision
from edge_agent.errors import BelowThresholdError
from edge_agent.mesh.state import HouseholdState
from edge_agent.models.store import PackStore
from edge_agent.sync.store import UpdateStore
from tests.support.cli import hearth, ok

pytestmark = pytest.mark.slow  # `hearth` in subprocesses, on the built packs

PACK = "bergamot-tiny11-en-pt@int8"


def refused(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert message in " ".join((proc.stdout + proc.stderr).split()), proc.stdout + proc.stderr


def toml(tmp: Path, name: str, profile: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f'[agent]\nname = "{name}"\nprofile = "{profile}"\n[mesh]\nstate_dir = "{tmp / name}"\n',
        encoding="utf-8",
    )
    return path


def test_publish_and_cosign_a_real_pack(tmp_path: Path, hearth_env: dict[str, str]) -> None:
    hub, alice = toml(tmp_path, "hub", "hub"), toml(tmp_path, "alice", "laptop")
    ok(hearth("household", "init", "-c", str(hub), env=hearth_env))
    provision(tmp_path / "hub", tmp_path / "alice", "alice", "laptop")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")

    # Before any key exists, publishing says what to do.
    refused(hearth("models", "publish", PACK, "--sequence", "1", "-c", str(hub), env=hearth_env),
            "this device holds no update key")  # fmt: skip
    hub_card = ok(hearth("household", "update-key", "-c", str(hub), env=hearth_env)).strip()
    alice_card = ok(hearth("household", "update-key", "-c", str(alice), env=hearth_env)).strip()
    assert hub_card.startswith("hub:") and alice_card.startswith("alice:")
    # Only the root signs key sets.
    refused(
        hearth("household", "update-keys", hub_card, "-c", str(alice), env=hearth_env),
        "holds no household root",
    )
    refused(
        hearth("household", "update-keys", "nonsense", "-c", str(hub), env=hearth_env),
        "is not an update key card",
    )
    out = ok(
        hearth(
            "household",
            "update-keys",
            hub_card,
            alice_card,
            "--threshold",
            "2",
            "-c",
            str(hub),
            env=hearth_env,
        )
    )
    assert "2 of 2" in out

    signed = tmp_path / "update.json"
    out = ok(hearth("models", "publish", PACK, "--sequence", "2", "--for", "appliance", "--out", str(signed),
                    "--health", "Good morning.", "-c", str(hub), env=hearth_env))  # fmt: skip
    assert "1 of 2 needed" in " ".join(out.split())

    # The fridge (an appliance) would refuse it with one signature of two.
    fridge_store = UpdateStore(tmp_path / "fridge")
    hub_store = UpdateStore(tmp_path / "hub")
    for store in (fridge_store, UpdateStore(tmp_path / "alice")):  # what distribution will hand on
        store.save_key_set(hub_store.key_set_path.read_bytes())
    membership, _ = HouseholdState(tmp_path / "fridge").membership()
    trusted, problems = fridge_store.load_trust(membership.root_key, membership.household_id)
    assert problems == [] and trusted.key_set is not None and trusted.key_set.threshold == 2
    with pytest.raises(BelowThresholdError, match="1 valid of 2 required"):
        trusted.verify_manifest(signed.read_bytes(), "appliance")

    out = ok(hearth("models", "sign", str(signed), "-c", str(alice), env=hearth_env))
    assert "2 signature(s), 2 needed" in out
    # The threshold is met and alice holds the pack: she keeps the manifest and seeds it (no agent runs
    # here, so it starts offering it with `hearth run`).
    said = " ".join(out.split())
    assert "stored for seeding" in said and "no agent runs here" in said
    assert [m.name for m in UpdateStore(tmp_path / "alice").manifests_dir.iterdir()]
    manifest = trusted.verify_manifest(signed.read_bytes(), "appliance")
    assert manifest.health is not None and manifest.health.pair == "en-pt" and manifest.health.expect
    pack = PackStore().get(PACK)
    assert manifest.pack_id == PACK and manifest.sequence == 2
    assert [f.path for f in manifest.files] == ["pack.json", *(f.path for f in pack.manifest.files)]
    assert manifest.total_size == sum(f.size for f in manifest.files) > pack.manifest.total_bytes
    for i in range(len(manifest.chunks)):
        file, offset, length = manifest.chunk_location(i)
        with (pack.path / file.path).open("rb") as fh:
            fh.seek(offset)
            trusted.verify_chunk(manifest, i, fh.read(length))

    status = json.loads(ok(hearth("models", "status", "--json", "-c", str(hub), env=hearth_env)))
    assert status["key_set"]["threshold"] == 2 and status["key_set"]["keys"] == ["hub", "alice"]
    assert [(m["pack"], m["sequence"]) for m in status["manifests"]] == [(PACK, 2)]
    # The hub's own copy has one signature (alice signed the --out file) and the hub is not an appliance.
    assert "BelowThresholdError" in status["manifests"][0]["status"]


def test_models_pull_off_the_mesh_says_why(tmp_path: Path, hearth_env: dict[str, str]) -> None:
    lonely = toml(tmp_path, "lonely", "fridge-panel")  # never paired: no household, no updates
    refused(hearth("models", "pull", "-c", str(lonely), env=hearth_env),
            "model updates are off on this device: it is not on a household mesh")  # fmt: skip
    assert "chunk" in ok(hearth("models", "pull", "--help", env=hearth_env))
