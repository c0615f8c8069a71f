"""Model update transfer: one real pack from the hub to four peers, each device in its own network
namespace behind a capped uplink (an nft rate limit per switch port, like a home device's Wi-Fi), the
broker (Mosquitto) on a sixth host with the same cap.

Same run, interleaved, medians over ``runs``:
- swarm, direct links: the four fetch at once from every holder (hub, then each other);
- one seeder: the hub serves them one after another, nobody else serves (direct links);
- raw TCP: the same bytes copied hub -> peer over a plain socket, one after another (the baseline);
- both Hearth cases again with every chunk through the broker (direct links off).

Goals (``ratios``): swarm at least 2x faster than the single seeder; per-peer throughput at least half
of raw TCP's. Verification cost (BLAKE3 per chunk, on arrival) is measured separately and reported
as a share of the swarm time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_report
from benchmarks.rigs import netlab
from benchmarks.rigs.meshkit import provision
from edge_agent.mesh.state import HouseholdState
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.store import PackStore
from edge_agent.sync.keys import UpdateKeySet, sign_key_set
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.trust import TrustedUpdates

PEERS = {"fridge": "fridge-panel", "car": "car-headunit", "phone": "phone", "laptop": "laptop"}
DEFAULT_PACK = "smollm2-135m-instruct@int4"
BROKER_PORT = 1883


class Node:
    """A `benchmarks.transfer_node` process in its namespace, stopped by its PID."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc, self.name = proc, name
        self.device = self.read()["ready"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"transfer node {self.name} exited (code {self.proc.wait()})")
            if line.startswith("{"):
                reply: dict[str, Any] = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"transfer node {self.name}: {reply['error']}")
                return reply

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.read()


@contextlib.contextmanager
def _node(host: netlab.Host, home: Path, broker: netlab.Host, name: str) -> Iterator[Node]:
    args = [sys.executable, "-m", "benchmarks.transfer_node", "--home", str(home),
            "--broker", f"{broker.ip}:{BROKER_PORT}", "--host", host.ip]  # fmt: skip
    proc = subprocess.Popen(host.cmd(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        yield Node(proc, name)
    finally:
        from edge_agent import processes

        processes.stop(proc)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _publish(tmp: Path, hub_home: Path, pack_path: Path, files: list[str], pack_id: str) -> tuple[Path, Path]:
    """The hub's update key listed in a root-signed key set, and the pack's manifest signed by it."""
    from edge_agent.sync.store import UpdateStore

    updates = UpdateStore(hub_home)
    card = updates.create_signing_key("hub")
    root, _ = HouseholdState(hub_home).load_root()
    now = datetime.now(UTC)
    key_set = UpdateKeySet(household_id=root.household_id, version=1, threshold=1, keys=[card],
                           issued_at=now, expires_at=now + timedelta(days=1))  # fmt: skip
    manifest = build_manifest(
        pack_path, files, household_id=root.household_id, name=pack_id.partition("@")[0], pack_id=pack_id,
        task="generate", sequence=2, device_classes=["appliance", "vehicle", "phone", "laptop"],
        issued_at=now, expires_at=now + timedelta(days=1), chunk_size=256 << 10,
    )  # fmt: skip
    key, _ = updates.signing_key()
    (tmp / "key-set.dsse").write_bytes(sign_key_set(key_set, root.key))
    (tmp / "manifest.dsse").write_bytes(sign_manifest(manifest, key))
    return tmp / "key-set.dsse", tmp / "manifest.dsse"


def _verify_cost(pack_path: Path, envelope: Path) -> tuple[float, float]:
    """(seconds, MB/s) to verify every chunk of the pack once, as a fetcher does on arrival."""
    from edge_agent.sync.staging import read_chunk
    from edge_agent.sync.trust import unverified_manifest

    manifest = unverified_manifest(envelope.read_bytes(), envelope.name)
    chunks = [read_chunk(pack_path, manifest, i) for i in range(len(manifest.chunks))]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for i, data in enumerate(chunks):
            TrustedUpdates.verify_chunk(manifest, i, data)
        times.append(time.perf_counter() - t)
    best = statistics.median(times)
    return best, manifest.total_size / best / 1e6


def _fetch_all(nodes: list[Node], **cmd: Any) -> list[dict[str, Any]]:
    for n in nodes:
        n.send(op="fetch", **cmd)
    replies = [n.read() for n in nodes]
    for n, r in zip(nodes, replies, strict=True):
        if r["state"] != "done":
            raise RuntimeError(f"{n.name} did not finish: {r['reason']}")
    return replies


def _forget(nodes: list[Node], content_id: str) -> None:
    for n in nodes:
        n.call(op="forget", content_id=content_id)


def run_transfer_bench(
    *, runs: int, cap_mb: float, pack_id: str, store: PackStore, out_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    if (why := netlab.available()) is not None:
        raise RuntimeError(f"the transfer benchmark needs network namespaces: {why}")
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise RuntimeError("the transfer benchmark needs Mosquitto (make system-deps)")
    pack = store.get(pack_id)
    files = [MANIFEST_NAME, *(f.path for f in pack.manifest.files)]

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    samples: dict[str, list[float]] = {k: [] for k in (
        "swarm_direct_s", "single_direct_s", "raw_tcp_s", "swarm_broker_s", "single_broker_s",
        "per_peer_direct_mbps", "per_peer_broker_mbps", "raw_tcp_mbps")}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hearth-transfer-") as tmp_name:
        tmp = Path(tmp_name)
        homes = {name: tmp / name for name in ["hub", *PEERS]}
        provision(homes["hub"], homes["hub"], "hub", "hub")
        for name, profile in PEERS.items():
            provision(homes["hub"], homes[name], name, profile)
        key_set, envelope = _publish(tmp, homes["hub"], pack.path, files, pack_id)
        verify_s, verify_mbps = _verify_cost(pack.path, envelope)
        size = sum((pack.path / f).stat().st_size for f in files)
        with netlab.lan(["broker", "hub", *PEERS]) as hosts, contextlib.ExitStack() as stack:
            netlab.cap_uplinks(hosts, cap_mb)
            stack.enter_context(netlab.process_in(hosts["broker"], *netlab.mosquitto_in(
                hosts["broker"], tmp / "broker", BROKER_PORT)))  # fmt: skip
            netlab.wait_for_port(hosts["hub"], hosts["broker"].ip, BROKER_PORT)
            nodes = {n: stack.enter_context(_node(hosts[n], homes[n], hosts["broker"], n)) for n in homes}
            hub, peers = nodes["hub"], [nodes[n] for n in PEERS]
            held = hub.call(op="hold", pack=str(pack.path), envelope=str(envelope), key_set=str(key_set))
            content_id = held["content_id"]
            end = time.monotonic() + 30
            while any(n.call(op="peers")["direct"] < len(nodes) - 1 for n in nodes.values()):
                if time.monotonic() > end:
                    raise RuntimeError("the devices did not all hear each other's presence in 30 s")
                time.sleep(0.2)
            raw_port = hub.call(op="raw_serve", pack=str(pack.path), files=files)["port"]
            for run in range(runs):
                say(f"run {run + 1}/{runs}: swarm (direct)")
                replies = _fetch_all(peers, direct=True)
                samples["swarm_direct_s"].append(
                    max(r["end"] for r in replies) - min(r["start"] for r in replies)
                )
                _forget(peers, content_id)
                for direct in (True, False):
                    path = "direct" if direct else "broker"
                    say(f"run {run + 1}/{runs}: one seeder, one peer after another ({path})")
                    total = 0.0
                    for peer in peers:
                        [r] = _fetch_all([peer], direct=direct, only=[hub.device])
                        total += r["end"] - r["start"]
                        samples[f"per_peer_{path}_mbps"].append(size / (r["end"] - r["start"]) / 1e6)
                        if r["received"].get(path, 0) != size:
                            raise RuntimeError(f"{peer.name} received {r['received']}, expected all {path}")
                    samples[f"single_{path}_s"].append(total)
                    _forget(peers, content_id)
                say(f"run {run + 1}/{runs}: raw TCP, one peer after another")
                total = 0.0
                for peer in peers:
                    r = peer.call(op="raw_fetch", host=hosts["hub"].ip, port=raw_port)
                    assert r["bytes"] == size, r
                    total += r["end"] - r["start"]
                    samples["raw_tcp_mbps"].append(size / (r["end"] - r["start"]) / 1e6)
                samples["raw_tcp_s"].append(total)
                say(f"run {run + 1}/{runs}: swarm (through the broker)")
                replies = _fetch_all(peers, direct=False)
                samples["swarm_broker_s"].append(
                    max(r["end"] for r in replies) - min(r["start"] for r in replies)
                )
                _forget(peers, content_id)
            for n in nodes.values():
                n.send(op="quit")
    med = {k: statistics.median(v) for k, v in samples.items()}
    result: dict[str, Any] = {
        "benchmark": "transfer",
        "machine": machine(),
        "pack": pack_id,
        "pack_mb": round(size / 1e6, 1),
        "peers": len(PEERS),
        "uplink_cap_mb_s": cap_mb,
        "runs": runs,
        "medians": {k: round(v, 3) for k, v in med.items()},
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        "verification": {
            "seconds": round(verify_s, 3),
            "mb_per_s": round(verify_mbps, 1),
            "share_of_swarm_time": round(verify_s / med["swarm_direct_s"], 4),
        },
        "ratios": {
            "swarm_vs_single_seeder": round(med["single_direct_s"] / med["swarm_direct_s"], 2),
            "per_peer_vs_raw_tcp": round(med["per_peer_direct_mbps"] / med["raw_tcp_mbps"], 2),
            "direct_vs_broker_swarm": round(med["swarm_broker_s"] / med["swarm_direct_s"], 2),
            "direct_vs_broker_per_peer": round(med["per_peer_direct_mbps"] / med["per_peer_broker_mbps"], 2),
        },
        "goals": {"swarm_vs_single_seeder": 2.0, "per_peer_vs_raw_tcp": 0.5},
    }
    md = _markdown(result)
    write_report(out_dir, "transfer", result, md)
    _plot(out_dir / "transfer.png", result)
    return result, md


def _markdown(r: dict[str, Any]) -> str:
    m, ratios = r["medians"], r["ratios"]
    mb = r["pack_mb"]
    lines = [
        f"### Model update transfer: {r['pack']} ({mb} MB) to {r['peers']} peers, "
        f"{r['uplink_cap_mb_s']:g} MB/s uplinks (nft), median of {r['runs']}",
        "",
        "| how | all four peers | per peer |",
        "|---|---|---|",
        f"| swarm, direct links | **{m['swarm_direct_s']:.1f} s** | |",
        f"| one seeder, one after another, direct links | {m['single_direct_s']:.1f} s | "
        f"{m['per_peer_direct_mbps']:.1f} MB/s |",
        f"| raw TCP copy, one after another | {m['raw_tcp_s']:.1f} s | {m['raw_tcp_mbps']:.1f} MB/s |",
        f"| swarm, through the broker | {m['swarm_broker_s']:.1f} s | |",
        f"| one seeder, through the broker | {m['single_broker_s']:.1f} s | "
        f"{m['per_peer_broker_mbps']:.1f} MB/s |",
        "",
        f"- swarm vs one seeder: **{ratios['swarm_vs_single_seeder']:.2f}x** (goal ≥ 2x)",
        f"- per-peer throughput vs raw TCP: **{ratios['per_peer_vs_raw_tcp']:.2f}** (goal ≥ 0.5)",
        f"- direct links vs through the broker: swarm {ratios['direct_vs_broker_swarm']:.2f}x, "
        f"per peer {ratios['direct_vs_broker_per_peer']:.2f}x",
        f"- verification (BLAKE3 per chunk, Merkle-bound digests): {r['verification']['seconds'] * 1000:.0f} ms "
        f"for the whole pack ({r['verification']['mb_per_s']:.0f} MB/s), "
        f"{100 * r['verification']['share_of_swarm_time']:.1f} % of the swarm time",
    ]
    return "\n".join(lines)


def _plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = r["medians"]
    labels = [
        "swarm\ndirect",
        "one seeder\ndirect",
        "raw TCP\n(sequential)",
        "swarm\nbroker",
        "one seeder\nbroker",
    ]
    values = [
        m["swarm_direct_s"],
        m["single_direct_s"],
        m["raw_tcp_s"],
        m["swarm_broker_s"],
        m["single_broker_s"],
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    bars = ax.bar(labels, values, color=["#d9480f", "#f08c00", "#868e96", "#d9480f", "#f08c00"])
    for bar in bars[3:]:
        bar.set_hatch("//")
    ax.bar_label(bars, fmt="%.1f s", fontsize=9)
    ax.set_ylabel("seconds until all four peers hold the pack")
    ax.margins(y=0.15)
    ax.set_title(f"{r['pack']} ({r['pack_mb']} MB) to {r['peers']} peers, {r['uplink_cap_mb_s']:g} MB/s uplinks",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
