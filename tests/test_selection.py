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
