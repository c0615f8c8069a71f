"""`models plan` is a pure function of (profile, packs)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.models.pack import PackManifest, Provenance, Requirements, Variant
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile


def _pack(name: str, task: str, quant: str, peak: float, isa: list[str] | None = None) -> PackManifest:
    return PackManifest(
        name=name,
        task=task,
        variant=Variant(quantization=quant, precision=quant),  # type: ignore[arg-type]
        files=[{"path": "model.onnx", "size": 1, "sha256": "0" * 64}],  # type: ignore[list-item]
        peak_ram_mb=peak,
        requirements=Requirements(runtime="onnxruntime", opset=17, isa=isa or []),
        provenance=Provenance(
            source_package="x", source_version="1", source_file="f", source_sha256="0" * 64, builder="t"
        ),
        created=datetime.now(UTC),
    )


PACKS = [
    _pack("llm", "generate", "int4", 283),
    _pack("llm", "generate", "int8", 360),
    _pack("llm", "generate", "fp32", 778),
    _pack("emb", "embed", "int8", 143),
    _pack("emb", "embed", "fp32", 201),
]


def test_fridge_offloads_the_llm_and_explains_why() -> None:
    plan = plan_for_profile(load_profile("fridge-panel"), PACKS)
    gen = plan.for_task("generate")
    assert gen.mode == "offload-only" and gen.chosen is None
    reasons = {r.pack_id: r.reason for r in gen.rejected}
    assert "needs 283 MB peak RAM, budget is 153 MB" in reasons["llm@int4"]
    assert "fp32 is not allowed on fridge-panel" in reasons["llm@fp32"]
    assert plan.for_task("embed").chosen_id == "emb@int8"


def test_hub_prefers_int4_and_gpu_server_prefers_quality() -> None:
    hub = plan_for_profile(load_profile("hub"), PACKS)
    assert hub.for_task("generate").chosen_id == "llm@int4"
    assert "first choice" in hub.for_task("generate").reason
    gpu = plan_for_profile(load_profile("gpu-server"), PACKS)
    assert gpu.for_task("generate").chosen_id == "llm@fp32"
    assert gpu.for_task("embed").chosen_id == "emb@fp32"
    car = plan_for_profile(load_profile("car-headunit"), PACKS)
    assert car.for_task("generate").chosen_id == "llm@int8"


def test_budget_boundary_and_isa_requirements() -> None:
    fridge = load_profile("fridge-panel")
    budget = fridge.model_ram_budget_mb
    exact = [_pack("emb", "embed", "int8", budget)]
    assert plan_for_profile(fridge, exact).for_task("embed").mode == "local"
    over = [_pack("emb", "embed", "int8", budget + 0.1)]
    assert plan_for_profile(fridge, over).for_task("embed").mode == "offload-only"
    needs_avx2 = [_pack("emb", "embed", "int8", 10, isa=["avx2"])]
    tp = plan_for_profile(fridge, needs_avx2).for_task("embed")
    assert tp.mode == "offload-only" and "needs ISA avx2" in tp.rejected[0].reason


def test_unbuilt_task_is_unavailable_and_plan_is_deterministic() -> None:
    hub = load_profile("hub")
    plan = plan_for_profile(hub, PACKS)
    assert plan.for_task("translate").mode == "unavailable"
    assert plan_for_profile(hub, list(reversed(PACKS))).tasks == plan.tasks


@pytest.mark.parametrize("profile", ["fridge-panel", "hub", "gpu-server"])
def test_plans_on_real_packs_differ(store: PackStore, profile: str) -> None:
    plans = {
        p: plan_for_profile(load_profile(p), [x.manifest for x in store.list()]).for_task("generate")
        for p in ("fridge-panel", "hub", "gpu-server")
    }
    assert plans["fridge-panel"].mode == "offload-only"
    assert plans["hub"].chosen_id == "smollm2-135m-instruct@int4"
    assert plans["gpu-server"].chosen_id == "smollm2-135m-instruct@fp32"
    assert plans[profile].reason


VOICE = [
    _pack("whisper", "transcribe", "int8", 287),
    _pack("whisper", "transcribe", "fp32", 461),
    _pack("vad", "vad", "fp32", 26),
]


def test_asr_budgets_per_profile() -> None:
    """The fridge's speech goes to a peer (its ASR budget is below Whisper's measured peak); the car and
    the phone transcribe themselves; every device keeps its VAD, a model made in fp32 only."""
    fridge = plan_for_profile(load_profile("fridge-panel"), VOICE)
    asr = fridge.for_task("transcribe")
    assert asr.mode == "offload-only"
    reasons = {r.pack_id: r.reason for r in asr.rejected}
    assert reasons["whisper@int8"].startswith("needs 287 MB peak RAM, budget is 153 MB")
    assert fridge.for_task("vad").chosen_id == "vad@fp32"
    assert "the only format this model comes in" in fridge.for_task("vad").reason
    car = plan_for_profile(load_profile("car-headunit"), VOICE)
    assert car.for_task("transcribe").chosen_id == "whisper@int8"
    assert plan_for_profile(load_profile("hub"), VOICE).for_task("transcribe").chosen_id == "whisper@int8"


def test_a_task_ram_cap_rejects_a_pack_that_fits_the_whole_budget() -> None:
    car = load_profile("car-headunit")
    assert car.task_ram_mb["transcribe"] == 320 < car.model_ram_budget_mb
    big = _pack("whisper", "transcribe", "int8", 330)
    tp = plan_for_profile(car, [big]).for_task("transcribe")
    assert tp.mode == "offload-only"
    assert tp.rejected[0].reason == "needs 330 MB peak RAM, car-headunit gives transcribe at most 320 MB"


def test_only_format_exception_does_not_apply_when_an_allowed_variant_exists() -> None:
    """fp32 stays refused on the fridge when the task also comes in int8, even if int8 does not fit."""
    tp = plan_for_profile(load_profile("fridge-panel"), VOICE[:2]).for_task("transcribe")
    assert "fp32 is not allowed on fridge-panel" in {r.pack_id: r.reason for r in tp.rejected}["whisper@fp32"]


def test_a_task_ram_cap_beyond_the_budget_is_a_profile_error() -> None:
    from pydantic import ValidationError

    from edge_agent.profiles.model import FirmwareProfile

    data = load_profile("fridge-panel").model_dump()
    data["task_ram_mb"] = {"transcribe": 400}
    with pytest.raises(
        ValidationError, match=r"task_ram_mb \{'transcribe': 400\} must be positive and within"
    ):
        FirmwareProfile.model_validate(data)


def test_a_pack_that_failed_its_quality_gate_here_is_passed_over() -> None:
    why = "failed its quality gate on this CPU FAILED: worst agreement 0.100 (padded), needs ≥ 0.817"
    hub = plan_for_profile(load_profile("hub"), PACKS, {"llm@int4": why})
    gen = hub.for_task("generate")
    assert gen.chosen_id == "llm@int8" and "best fit (choice 2)" in gen.reason
    assert {r.pack_id: r.reason for r in gen.rejected}["llm@int4"] == why
    fridge = plan_for_profile(load_profile("fridge-panel"), PACKS, {"emb@int8": why})
    emb = fridge.for_task("embed")  # fp32 is not allowed there: the task goes to a peer
    assert emb.mode == "offload-only" and {r.pack_id: r.reason for r in emb.rejected}["emb@int8"] == why
    assert (
        plan_for_profile(load_profile("hub"), PACKS, {}).tasks
        == plan_for_profile(load_profile("hub"), PACKS).tasks
    )
