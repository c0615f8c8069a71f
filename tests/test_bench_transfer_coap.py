"""`hearth bench transfer --transport coap` (benchmarks/transfer.py) on a tiny pack: five devices in
network namespaces reach each other over CoAP alone, one seeder serves every peer over OSCORE block-wise,
and the report has its shape. No timing is asserted; a swarm that gives up is a result, recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks.rigs import netlab
from benchmarks.transfer import run_transfer_bench
from edge_agent.models.pack import MANIFEST_NAME

pytestmark = [
    pytest.mark.slow,  # five processes in network namespaces, ~45 s
    pytest.mark.skipif(netlab.available() is not None, reason=str(netlab.available())),
]


class TinyStore:
    """A store holding one made-up pack of three chunks (the benchmark only moves its files)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "tiny"
        self.path.mkdir()
        (self.path / MANIFEST_NAME).write_text('{"pack_id": "tiny-test@fp32"}\n')
        (self.path / "model.onnx").write_bytes(os.urandom(600_000))

    def get(self, pack_id: str) -> Any:
        return SimpleNamespace(
            path=self.path, manifest=SimpleNamespace(files=[SimpleNamespace(path="model.onnx")])
        )


def test_the_coap_transfer_bench_moves_a_pack_over_coap_and_reports_its_shape(tmp_path: Path) -> None:
    store: Any = TinyStore(tmp_path)
    out = tmp_path / "results"
    result, md = run_transfer_bench(runs=1, cap_mb=10.0, pack_id="tiny-test@fp32", store=store, out_dir=out,
                                    quiet=True, transport="coap")  # fmt: skip

    assert json.loads((out / "transfer_coap.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "transfer_coap.md").read_text().strip() == md.strip()
    assert not (out / "transfer.json").exists()  # the MQTT run's results stay as they are
    assert result["transport"] == "coap" and result["runs"] == 1 and result["peers"] == 4
    assert {"cpu", "cores"} <= set(result["machine"])
    assert set(result["medians"]) == {"single_coap_s", "single_coap_typical_s", "swarm_coap_s", "raw_tcp_s",
                                      "per_peer_coap_mbps", "raw_tcp_mbps"}  # fmt: skip
    assert not [f for f in result["failures"] if f["case"] == "single"]
    assert len(result["samples"]["per_peer_coap_mbps"]) == len(result["samples"]["raw_tcp_mbps"]) == 4
    assert 0 < result["medians"]["per_peer_coap_mbps"] < result["medians"]["raw_tcp_mbps"]
    costs = result["one_seeder"]
    assert costs["datagrams_in"] > 600_000 / 1024  # a block a datagram, every chunk base64 and padded
    assert costs["message_bytes_vs_pack"] > 1.33
    assert costs["holder_cpu_ms_per_block"] > 0 and costs["fetcher_cpu_ms_per_block"] > 0
    ratios = result["ratios"]
    assert set(ratios) == {"swarm_vs_single_seeder", "coap_per_peer_vs_raw", "coap_block_vs_udp_lockstep"}
    assert 0 < ratios["coap_per_peer_vs_raw"] < 1 and ratios["coap_block_vs_udp_lockstep"] > 0
    swarm_failed = {f["run"] for f in result["failures"] if f["case"] == "swarm"}
    assert (ratios["swarm_vs_single_seeder"] is None) == (swarm_failed == {1})
    assert (
        result["ratios"]["swarm_vs_single_seeder"] is None or result["ratios"]["swarm_vs_single_seeder"] > 0
    )
