"""`hearth bench mesh --transport coap` (benchmarks/mesh_coap.py) at a tiny size: every stack answers
(its echo in its own process, Mosquitto for the two MQTT stacks), and the report has its shape: medians,
req/s, bytes on the wire, every ratio a positive number. No timing is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.mesh_coap import COAP_STACKS, STACKS, Plan, run_mesh_coap_bench

pytestmark = pytest.mark.slow  # a real Mosquitto and six answering processes

SIZES = (200, 4096)  # one datagram, and block-wise


def test_the_coap_mesh_bench_runs_every_stack_and_reports_its_shape(tmp_path: Path) -> None:
    plan = Plan(runs=2, sizes=SIZES, coap_rate={200: 4, 4096: 2}, mqtt_rate=4, bytes_trips=1)
    result, md = run_mesh_coap_bench(qos=1, out_dir=tmp_path, plan=plan)

    assert result["benchmark"] == "mesh_coap"
    assert json.loads((tmp_path / "mesh_coap.json").read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "mesh_coap.md").read_text().strip() == md.strip()
    assert (tmp_path / "mesh_coap.png").stat().st_size > 0
    for size in map(str, SIZES):
        assert set(result["sizes"][size]) == set(STACKS)
        for figures in result["sizes"][size].values():
            assert set(figures) == {"p50_ms", "p99_ms", "requests_per_s", "in_flight"}
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
            assert figures["requests_per_s"] > 0
        assert set(result["non_confirmable_rps"][size]) == {"coap_plain", "aiocoap_oscore"}
        wire = result["bytes_per_request"][size]
        assert set(wire) == set(STACKS)
        for name in STACKS:
            assert wire[name]["wire_bytes"] > 2 * int(size)  # both payloads, and headers
        for name in COAP_STACKS:
            assert wire[name]["sent"] + wire[name]["received"] == wire[name]["wire_bytes"]
    names = ("oscore_p50_vs_plain", "coap_p50_vs_raw", "coap_rps_vs_raw", "oscore_only_vs_envelope_p50",
             "coap_p50_vs_mqtt", "coap_bytes_vs_mqtt", "aiocoap_oscore_p50_vs_plain")  # fmt: skip
    assert set(result["ratios"]) == {f"{name}_{size}B" for name in names for size in SIZES}
    for value in result["ratios"].values():
        assert isinstance(value, float) and value > 0 and math.isfinite(value)
    assert set(result["goals"]) == {f"{g}_{size}B" for g in names[:2] for size in SIZES}
    overhead = result["oscore_overhead_bytes"]
    assert overhead is not None and overhead["request"] > 0 and overhead["response"] > 0
    assert "cpu" in result["setup"] and "formulas" in result["setup"]
