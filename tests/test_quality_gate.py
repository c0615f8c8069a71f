"""The quality gate: int8 packs are right on this CPU, a pack that is wrong here is not used, and the cause
(16-bit saturation of u8 x s8 on x86 without VNNI) is shown on an emulated Haswell (qemu-user)."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.rigs import quality_clips
from edge_agent.models.pack import PackManifest
from edge_agent.models.quality import (
    QUALITY_FILE,
    QualityCase,
    QualityReference,
    cosine,
    judge,
    token_agreement,
    word_error_rate,
)
from edge_agent.models.store import InstalledPack, PackStore, sha256_file
from edge_agent.packs import host_gate
from edge_agent.packs.builders.quality_reference import INPUTS
from edge_agent.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
QUANTIZED = (
    "whisper-tiny-en@int8",
    "all-minilm-l6-v2@int8",
    "bergamot-tiny11-en-pt@int8",
    "bergamot-tiny11-pt-en@int8",
    "smollm2-135m-instruct@int4",
    "smollm2-135m-instruct@int8",
)


# -- metrics and verdicts (IO-free) ---------------------------------------------------------------------


def test_word_error_rate_counts_edits_on_normalised_words() -> None:  # benchmarks/isa_check uses it
    assert word_error_rate("Turn off the kitchen lights.", "turn off the kitchen lights") == 0.0
    assert word_error_rate("Turn off the kitchen lights.", "Turn off my kitchen lights.") == 0.2
    assert word_error_rate("Turn off the kitchen lights.", "After enough medication lives.") == 1.0
    assert word_error_rate("lights off", "lights off now please") == 1.0  # two insertions, two words
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "hello") == 1.0


def test_cosine_and_agreement() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([1.0], [1.0, 0.0]) == 0.0  # a wrong dimension is no match
    assert token_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 0.75
    assert token_agreement([1, 2, 3, 4], [1, 2]) == 0.5  # missing predictions count as misses


def _reference(metric: str, threshold: float, names: tuple[str, ...] = ("a", "b")) -> QualityReference:
    return QualityReference(
        metric=metric,  # type: ignore[arg-type]
        cases=[QualityCase(name=n, text="x", expect_tokens=[1, 2]) for n in names],
        threshold=threshold,
        built_score=0.0,
        built_on="test",
        reference="test",
    )


def test_one_hard_input_failing_fails_the_pack() -> None:
    failed = judge(_reference("agreement", 0.75), {"a": 1.0, "b": 0.1})
    assert not failed.passed and failed.worst_case == "b" and failed.worst == 0.1
    assert failed.summary() == "FAILED: worst agreement 0.100 (b), needs ≥ 0.750"
    passed = judge(_reference("cosine", 0.95), {"a": 0.999, "b": 0.96})
    assert passed.passed and passed.worst_case == "b"
    with pytest.raises(ValueError, match="no score for reference case"):
        judge(_reference("agreement", 0.75), {"a": 1.0})


def test_a_reference_cannot_point_outside_its_pack() -> None:
    with pytest.raises(ValueError, match="unsafe audio path"):
        QualityCase(name="x", audio="../../etc/passwd", expect_text="")


# -- the committed inputs are what their recipe makes ----------------------------------------------------


def test_committed_speech_inputs_are_byte_identical_to_their_recipe(tmp_path: Path) -> None:
    made = quality_clips.make(tmp_path / "out", tmp_path / "work")
    assert sorted(p.name for p in made) == sorted(p.name for p in INPUTS.glob("*.flac"))
    for path in made:
        assert sha256_file(path) == sha256_file(INPUTS / path.name), f"{path.name} differs from its recipe"


# -- real packs on this CPU -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("pack_id", QUANTIZED)
def test_every_quantized_pack_carries_a_reference_and_passes_it_here(store: PackStore, pack_id: str) -> None:
    pack = store.get(pack_id)
    ref = host_gate.read_reference(pack)
    assert ref is not None, f"{pack_id} was built without {QUALITY_FILE}"
    assert len(ref.cases) >= 3
    verdict = host_gate.measure(pack.path, pack.manifest.task, pack.manifest.task_info, ref, threads=2)
    assert verdict.passed, f"{pack_id} on {host_gate.host_key()}: {verdict.summary()} {verdict.scores}"


def _copy_with_reference(
    src: InstalledPack, store: PackStore, edit: dict[str, list[int]], replace: dict[str, bytes] | None = None
) -> None:
    """A copy of ``src`` in ``store`` whose recorded answers are changed by ``edit`` (case → tokens) and
    files by ``replace``, with its manifest's digests updated to match (as a publisher's pack would be)."""
    dst = store.packs / src.pack_id
    shutil.copytree(src.path, dst)
    ref = json.loads((dst / QUALITY_FILE).read_text())
    for case in ref["cases"]:
        case["expect_tokens"] = edit.get(case["name"], case["expect_tokens"])
    (dst / QUALITY_FILE).write_text(json.dumps(ref))
    for rel, data in (replace or {}).items():
        (dst / rel).unlink()
        (dst / rel).write_bytes(data)
    manifest = PackManifest.model_validate_json((dst / "pack.json").read_text())
    files = [
        f.model_copy(update={"size": (dst / f.path).stat().st_size, "sha256": sha256_file(dst / f.path)})
        for f in manifest.files
    ]
    (dst / "pack.json").write_text(manifest.model_copy(update={"files": files}).model_dump_json())


@pytest.mark.slow
def test_a_pack_wrong_on_this_cpu_is_not_planned_and_the_plan_falls_back(
    store: PackStore, tmp_path: Path
) -> None:
    here = PackStore(tmp_path / "store")
    here.packs.mkdir(parents=True)
    # What this CPU answers can no longer match, on one input: as if the int8 kernels here computed
    # something else ("After enough medication lives.", heard on a CPU without VNNI, in Whisper's tokens).
    garbage = [2293, 1576, 14103, 3160, 13, 50256]
    _copy_with_reference(store.get("whisper-tiny-en@int8"), here, {"padded": garbage})
    shutil.copytree(store.get("whisper-tiny-en@fp32").path, here.packs / "whisper-tiny-en@fp32")
    runs: list[str] = []

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        runs.append(args[0].name)
        return host_gate.measure(*args, **kwargs)

    gate = host_gate.HostGate(here, runner=counted)
    hub = load_profile("hub")  # prefers int8 for transcription
    plan, results = host_gate.gated_plan(hub, here.list(), gate)
    tp = plan.for_task("transcribe")
    assert tp.mode == "local" and tp.chosen_id == "whisper-tiny-en@fp32"
    failed = next(r for r in tp.rejected if r.pack_id == "whisper-tiny-en@int8")
    assert failed.reason.startswith("failed its quality gate on this CPU FAILED: worst agreement ")
    assert "(padded), needs ≥ 0." in failed.reason
    assert not results["whisper-tiny-en@int8"].passed
    assert runs == ["whisper-tiny-en@int8"]  # fp32 carries no reference: it is the reference
    # Remembered for this CPU and runtime: the next plan runs nothing.
    plan2, results2 = host_gate.gated_plan(hub, here.list(), host_gate.HostGate(here, runner=counted))
    assert plan2.for_task("transcribe").chosen_id == "whisper-tiny-en@fp32"
    assert results2["whisper-tiny-en@int8"].cached and runs == ["whisper-tiny-en@int8"]
    # The store's packs are untouched by the gate.
    assert sorted(p.pack_id for p in here.list()) == ["whisper-tiny-en@fp32", "whisper-tiny-en@int8"]


@pytest.mark.slow
def test_a_pack_that_cannot_run_here_is_not_planned(store: PackStore, tmp_path: Path) -> None:
    here = PackStore(tmp_path / "store")
    here.packs.mkdir(parents=True)
    _copy_with_reference(store.get("all-minilm-l6-v2@int8"), here, {}, {"model.onnx": b"not a model"})
    shutil.copytree(store.get("all-minilm-l6-v2@fp32").path, here.packs / "all-minilm-l6-v2@fp32")
    plan, _ = host_gate.gated_plan(load_profile("hub"), here.list(), host_gate.HostGate(here))
    tp = plan.for_task("embed")
    assert tp.chosen_id == "all-minilm-l6-v2@fp32"
    why = next(r.reason for r in tp.rejected if r.pack_id == "all-minilm-l6-v2@int8")
    assert why.startswith("all-minilm-l6-v2@int8: its quality reference could not run here: ")
    assert not (here.root / host_gate.CACHE_FILE).exists()  # an error is not a verdict: not remembered


@pytest.mark.slow
def test_hearth_models_plan_says_which_pack_passed_here(store: PackStore, hearth_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent", "models", "plan", "-p", "hub", "--json"],
        capture_output=True, text=True, env=hearth_env, check=True, timeout=600,
    ).stdout  # fmt: skip
    plan = json.loads(out)
    transcribe = plan["tasks"]["transcribe"]
    assert transcribe["pack"] == "whisper-tiny-en@int8"
    gate = transcribe["quality_gate"]
    assert gate["passed"] is True and gate["metric"] == "agreement" and gate["worst"] >= gate["threshold"]
    assert plan["host"].startswith(("x86_64", "aarch64"))


# -- the cause, on an emulated CPU without VNNI ----------------------------------------------------------

SATURATION_PROBE = REPO / "benchmarks" / "rigs" / "int8_saturation.py"


def _probe(*prefix: str) -> dict[str, dict[str, int]]:
    out = subprocess.run(
        [*prefix, sys.executable, str(SATURATION_PROBE)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    result: dict[str, dict[str, int]] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU without VNNI")
def test_full_range_int8_weights_saturate_without_vnni_and_7_bit_weights_do_not() -> None:
    """onnxruntime's u8 x s8 kernel on AVX2 (``vpmaddubsw``) adds pairs of products in 16 bits: with full
    range weights 255 * 127 * 2 > 32767 saturates; the 7-bit weights every int8 pack now uses cannot."""
    if shutil.which("qemu-x86_64") is None:
        pytest.fail("qemu-x86_64 is missing: `make system-deps` installs qemu-user")
    haswell = _probe("qemu-x86_64", "-cpu", "Haswell")
    assert haswell["full range s8"]["got"] != haswell["full range s8"]["exact"]
    assert haswell["7-bit s8"]["got"] == haswell["7-bit s8"]["exact"]
    assert haswell["u8"]["got"] == haswell["u8"]["exact"]
    native = _probe()
    assert native["7-bit s8"]["got"] == native["7-bit s8"]["exact"]
