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

``transport="coap"`` (`run_transfer_bench`): the same household and capped links with no broker at all:
each device runs the CoAP transport alone (`CoapLinks`, its own IP, port 5683, the others' as seeds;
no direct TLS links), so every chunk request and chunk is an OSCORE-protected POST, block-wise in
1 KiB blocks, one confirmable exchange in flight per peer (NSTART=1). Cases: swarm over CoAP, one
seeder over CoAP (one peer after another), raw TCP as before; plus where the time goes (CPU seconds
of both ends per block, blocks per second, and a plain asyncio UDP lockstep of 1 KiB datagrams between
the same two namespaces: the floor of any lockstep without CoAP or OSCORE). A device that gives up is
recorded (``failures``), not an error. The swarm ratio takes one seeder's time as four times its median
fetch. Raw TCP there is the link's sustained rate (timed past nft's token bucket, which lets a second's
worth through at line rate after a pause: more than a small pack). Results go to
``transfer_coap.{json,md}``.

``HEARTH_TRANSFER_LOGS=DIR`` keeps each device's log (Hearth's INFO lines) in ``DIR/<device>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from edge_agent.mesh.settings import CoapSettings
from edge_agent.mesh.state import HouseholdState
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.store import PackStore
from edge_agent.sync.keys import UpdateKeySet, sign_key_set
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.trust import TrustedUpdates

PEERS = {"fridge": "fridge-panel", "car": "car-headunit", "phone": "phone", "laptop": "laptop"}
DEFAULT_PACK = "smollm2-135m-instruct@int4"
BROKER_PORT = 1883
COAP_PORT = 5683
COAP_DEFAULT_PACK = "silero-vad@fp32"
"""The pack the CoAP run moves unless told otherwise: the smallest real one (2.3 MB). CoAP moves ~0.4 MB/s
per peer here (the 90 MB LLM pack would take ~4 min per peer, ~30 min a run), and a run should take
minutes."""
COAP_DEFAULT_RUNS = 2
UDP_TRIPS = 3000
BLOCK = 1024
CHUNK_SIZE = 256 << 10
RAW_WARM_BYTES = 16_000_000
"""The raw TCP baseline of the CoAP run times the link after this many bytes: after a pause, nft's limit
lets a second's worth of its rate (plus the burst) through at line rate, more than a small pack."""
RAW_MIN_BYTES = 2 * RAW_WARM_BYTES
SETTLE_S = 180.0
"""After a CoAP phase, how long every device may take to hear every other one again before the run stops."""


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
def _node(host: netlab.Host, home: Path, broker: netlab.Host | None, name: str,
          seeds: list[netlab.Host] | None = None) -> Iterator[Node]:  # fmt: skip
    """A transfer node on ``host``: through the broker's Mosquitto, or (``broker`` None) over CoAP alone
    with the ``seeds`` hosts' CoAP endpoints to learn its peers from."""
    args = [sys.executable, "-m", "benchmarks.transfer_node", "--home", str(home), "--host", host.ip]
    if broker is not None:
        args += ["--broker", f"{broker.ip}:{BROKER_PORT}"]
    else:
        args += ["--transport", "coap", "--coap-port", str(COAP_PORT),
                 "--seeds", ",".join(f"{s.ip}:{COAP_PORT}" for s in seeds or [])]  # fmt: skip
    logs = os.environ.get("HEARTH_TRANSFER_LOGS")  # a directory: each device's log there (INFO)
    with open(Path(logs) / f"{name}.log", "w") if logs else contextlib.nullcontext(subprocess.DEVNULL) as err:
        proc = subprocess.Popen(host.cmd(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True)  # fmt: skip
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
        issued_at=now, expires_at=now + timedelta(days=1), chunk_size=CHUNK_SIZE,
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
    *,
    runs: int | None,
    cap_mb: float,
    pack_id: str | None,
    store: PackStore,
    out_dir: Path,
    quiet: bool = False,
    transport: str = "mqtt",
) -> tuple[dict[str, Any], str]:
    """The transfer benchmark over ``transport`` ("mqtt": the broker and direct TLS links; "coap": CoAP
    alone). ``runs`` and ``pack_id`` None: that transport's defaults."""
    if (why := netlab.available()) is not None:
        raise RuntimeError(f"the transfer benchmark needs network namespaces: {why}")
    if transport == "coap":
        return run_transfer_coap(runs=COAP_DEFAULT_RUNS if runs is None else runs, cap_mb=cap_mb,
                                 pack_id=pack_id or COAP_DEFAULT_PACK, store=store, out_dir=out_dir,
                                 quiet=quiet)  # fmt: skip
    if transport != "mqtt":
        raise ValueError(f"unknown transport {transport!r} (mqtt or coap)")
    runs = 3 if runs is None else runs
    pack_id = pack_id or DEFAULT_PACK
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


# -- over CoAP ------------------------------------------------------------------------------------------


def _delta(before: dict[str, Any], after: dict[str, Any], key: str) -> float:
    return float(after[key]) - float(before[key])


def _coap(reply: dict[str, Any], key: str) -> int:
    """A CoAP counter's change (`transfer_node.CountingLinks`) over one fetch."""
    return int(reply["after"]["coap"][key]) - int(reply["before"]["coap"][key])


def _settle(
    nodes: dict[str, Node], timeout: float, after: str, waits: dict[str, float] | None = None
) -> None:
    """Until every device hears every other one and knows where it answers CoAP (a phase's traffic may
    have left some adverts late; how long that took goes in ``waits``); raises RuntimeError naming who
    missed whom after ``timeout``."""
    start = time.monotonic()
    while True:
        views = {name: n.call(op="peers") for name, n in nodes.items()}
        if all(min(v["peers"], v["coap"]) >= len(nodes) - 1 for v in views.values()):
            if waits is not None:
                waits[after] = round(time.monotonic() - start, 1)
            return
        if time.monotonic() - start > timeout:
            missing = {name: [m for m, n in nodes.items() if m != name and n.device not in v["heard"]]
                       for name, v in views.items()}  # fmt: skip
            missing = {name: names for name, names in missing.items() if names}
            raise RuntimeError(f"after {after}, the devices did not all hear each other over CoAP within "
                               f"{timeout:g} s; not heard: {missing}")  # fmt: skip
        time.sleep(0.2)


def _fetch_or_fail(nodes: list[Node], failures: list[dict[str, Any]], case: str, run: int,
                   **cmd: Any) -> list[dict[str, Any]] | None:  # fmt: skip
    """`_fetch_all`, where a device that gives up is a result (recorded in ``failures``), not an error."""
    for n in nodes:
        n.send(op="fetch", **cmd)
    replies = [n.read() for n in nodes]
    failed = [(n, r) for n, r in zip(nodes, replies, strict=True) if r["state"] != "done"]
    for n, r in failed:
        failures.append({"case": case, "run": run + 1, "device": n.name, "reason": r["reason"]})
    return None if failed else replies


def run_transfer_coap(
    *, runs: int, cap_mb: float, pack_id: str, store: PackStore, out_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    """The transfer over CoAP alone (no broker, no direct TLS links): one seeder, swarm, raw TCP."""
    pack = store.get(pack_id)
    files = [MANIFEST_NAME, *(f.path for f in pack.manifest.files)]

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    samples: dict[str, list[float]] = {k: [] for k in (
        "single_coap_s", "swarm_coap_s", "raw_tcp_s", "per_peer_coap_mbps", "raw_tcp_mbps")}  # fmt: skip
    # Where one seeder's time goes, per fetch: both ends' CPU seconds, the datagrams the fetcher took.
    single: dict[str, list[float]] = {k: [] for k in (
        "seconds", "hub_cpu_s", "peer_cpu_s", "peer_rx_packets", "peer_tx_packets", "message_bytes",
        "failed_sends", "max_loop_lag_ms")}  # fmt: skip
    swarm: dict[str, list[float]] = {k: [] for k in (
        "cores_busy", "message_bytes", "failed_sends", "max_loop_lag_ms")}  # fmt: skip
    failures: list[dict[str, Any]] = []
    waits: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hearth-transfer-coap-") as tmp_name:
        tmp = Path(tmp_name)
        homes = {name: tmp / name for name in ["hub", *PEERS]}
        provision(homes["hub"], homes["hub"], "hub", "hub")
        for name, profile in PEERS.items():
            provision(homes["hub"], homes[name], name, profile)
        key_set, envelope = _publish(tmp, homes["hub"], pack.path, files, pack_id)
        verify_s, verify_mbps = _verify_cost(pack.path, envelope)
        size = sum((pack.path / f).stat().st_size for f in files)
        with netlab.lan(["hub", *PEERS]) as hosts, contextlib.ExitStack() as stack:
            netlab.cap_uplinks(hosts, cap_mb)
            nodes = {n: stack.enter_context(_node(hosts[n], homes[n], None, n,
                                                  [h for m, h in hosts.items() if m != n])) for n in homes}  # fmt: skip
            hub, peers = nodes["hub"], [nodes[n] for n in PEERS]
            held = hub.call(op="hold", pack=str(pack.path), envelope=str(envelope), key_set=str(key_set))
            content_id = held["content_id"]
            _settle(nodes, 60, "start")
            repeat = -(-RAW_MIN_BYTES // size)  # the pack's bytes again and again, past the bucket
            raw_port = hub.call(op="raw_serve", pack=str(pack.path), files=files, repeat=repeat)["port"]
            udp_port = hub.call(op="udp_echo")["port"]
            say(f"UDP lockstep: {UDP_TRIPS} datagrams of {BLOCK} bytes, {peers[0].name} -> hub")
            udp = peers[0].call(op="udp_lockstep", host=hosts["hub"].ip, port=udp_port, trips=UDP_TRIPS,
                                size=BLOCK)  # fmt: skip
            for run in range(runs):
                say(f"run {run + 1}/{runs}: one seeder over CoAP, one peer after another")
                total: float | None = 0.0
                for peer in peers:
                    hub_before = hub.call(op="stats")
                    replies = _fetch_or_fail([peer], failures, "single", run, direct=False, only=[hub.device])
                    hub_after = hub.call(op="stats")
                    if replies is None:
                        total = None
                        continue
                    [r] = replies
                    if sum(r["received"].values()) != size or _coap(r, "bytes") < size:
                        raise RuntimeError(f"{peer.name} received {r['received']}, "
                                           f"{_coap(r, 'bytes')} bytes over CoAP")  # fmt: skip
                    seconds = r["end"] - r["start"]
                    total = None if total is None else total + seconds
                    samples["per_peer_coap_mbps"].append(size / seconds / 1e6)
                    single["seconds"].append(seconds)
                    single["hub_cpu_s"].append(_delta(hub_before, hub_after, "cpu_s"))
                    single["peer_cpu_s"].append(_delta(r["before"], r["after"], "cpu_s"))
                    single["peer_rx_packets"].append(_delta(r["before"], r["after"], "rx_packets"))
                    single["peer_tx_packets"].append(_delta(r["before"], r["after"], "tx_packets"))
                    single["message_bytes"].append(_coap(r, "bytes"))
                    single["failed_sends"].append(_coap({"before": hub_before, "after": hub_after}, "failed"))
                    single["max_loop_lag_ms"].append(
                        max(hub_after["max_loop_lag_ms"], r["after"]["max_loop_lag_ms"])
                    )
                if total is not None:
                    samples["single_coap_s"].append(total)
                _forget(peers, content_id)
                _settle(nodes, SETTLE_S, f"one seeder (run {run + 1})", waits)
                say(f"run {run + 1}/{runs}: swarm over CoAP")
                before = [n.call(op="stats") for n in nodes.values()]
                replies = _fetch_or_fail(peers, failures, "swarm", run, direct=False)
                after = [n.call(op="stats") for n in nodes.values()]
                pairs = [{"before": b, "after": a} for b, a in zip(before, after, strict=True)]
                if replies is not None:
                    took = max(r["end"] for r in replies) - min(r["start"] for r in replies)
                    samples["swarm_coap_s"].append(took)
                    swarm["cores_busy"].append(sum(_delta(b, a, "cpu_s") for b, a in zip(before, after, strict=True))
                                               / took)  # fmt: skip
                    swarm["message_bytes"].append(sum(_coap(r, "bytes") for r in replies) / len(replies))
                swarm["failed_sends"].append(sum(_coap(p, "failed") for p in pairs))
                swarm["max_loop_lag_ms"].append(max(a["max_loop_lag_ms"] for a in after))
                _forget(peers, content_id)
                _settle(nodes, SETTLE_S, f"the swarm (run {run + 1})", waits)
                say(f"run {run + 1}/{runs}: raw TCP, one peer after another (sustained rate)")
                total = 0.0
                for peer in peers:
                    r = peer.call(
                        op="raw_fetch", host=hosts["hub"].ip, port=raw_port, warm_bytes=RAW_WARM_BYTES
                    )
                    assert r["bytes"] == size * repeat, r
                    mbps = (r["bytes"] - r["warm_bytes"]) / (r["end"] - r["warm"]) / 1e6
                    total += size / mbps / 1e6  # the pack's time at that rate
                    samples["raw_tcp_mbps"].append(mbps)
                samples["raw_tcp_s"].append(total)
            for n in nodes.values():
                n.send(op="quit")
    result = _result_coap(
        pack_id, size, cap_mb, runs, samples, single, swarm, failures, udp, verify_s, verify_mbps
    )
    result["heard_again_after_s"] = waits
    md = _markdown_coap(result)
    write_report(out_dir, "transfer_coap", result, md)
    return result, md


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _result_coap(
    pack_id: str, size: int, cap_mb: float, runs: int, samples: dict[str, list[float]],
    single: dict[str, list[float]], swarm: dict[str, list[float]], failures: list[dict[str, Any]],
    udp: dict[str, Any], verify_s: float, verify_mbps: float,
) -> dict[str, Any]:  # fmt: skip
    def r(x: float | None, digits: int = 3) -> float | None:
        return None if x is None else round(x, digits)

    med = {k: _median(v) for k, v in samples.items()}
    per = {k: _median(v) for k, v in single.items()}
    udp_ms = 1000 * udp["seconds"] / udp["trips"]
    costs: dict[str, Any] = {}
    block_ms = None
    if per["seconds"] and per["peer_rx_packets"]:
        blocks = per["peer_rx_packets"]  # the holder POSTs each chunk to the fetcher: a block a datagram
        block_ms = 1000 * per["seconds"] / blocks
        hub_cpu, peer_cpu = per["hub_cpu_s"] or 0.0, per["peer_cpu_s"] or 0.0
        costs = {
            "blocks_per_s": r(blocks / per["seconds"], 1),
            "ms_per_block": r(block_ms),
            "holder_cpu_ms_per_block": r(1000 * hub_cpu / blocks),
            "fetcher_cpu_ms_per_block": r(1000 * peer_cpu / blocks),
            "cores_busy": r((hub_cpu + peer_cpu) / per["seconds"], 2),
            "datagrams_in": int(blocks),
            "datagrams_out": int(per["peer_tx_packets"] or 0),
            "message_bytes": int(per["message_bytes"] or 0),
            "message_bytes_vs_pack": r((per["message_bytes"] or 0) / size),
            "failed_sends": int(sum(single["failed_sends"])),
            "slowest_fetch_s": r(max(single["seconds"]), 1),
            "max_loop_lag_ms": r(max(single["max_loop_lag_ms"]), 1),
        }
    message_bytes = _median(swarm["message_bytes"])
    swarm_costs = {
        "cores_busy": r(_median(swarm["cores_busy"]), 2),
        "message_bytes_per_peer_vs_one_seeder": r(message_bytes / per["message_bytes"], 2)
        if message_bytes and per["message_bytes"] else None,
        "failed_sends": [int(x) for x in swarm["failed_sends"]],
        "max_loop_lag_ms": [r(x, 1) for x in swarm["max_loop_lag_ms"]],
    }  # fmt: skip
    # One seeder serving all four: the median fetch four times over (with two or three runs, a median of
    # the runs' totals would be their mean, and one fetch that stalls would make the swarm look good).
    single_s = len(PEERS) * per["seconds"] if per["seconds"] else None
    swarm_s = med["swarm_coap_s"]
    coap_mbps, raw_mbps = med["per_peer_coap_mbps"], med["raw_tcp_mbps"]
    return {
        "benchmark": "transfer",
        "transport": "coap",
        "machine": machine(),
        "pack": pack_id,
        "pack_mb": round(size / 1e6, 1),
        "peers": len(PEERS),
        "uplink_cap_mb_s": cap_mb,
        "runs": runs,
        "coap": {
            "block_bytes": BLOCK,
            "nstart": 1,
            "chunk_kib": CHUNK_SIZE >> 10,
            "request_timeout_s": CoapSettings().request_timeout_s,
        },
        "medians": {k: r(v) for k, v in med.items()} | {"single_coap_typical_s": r(single_s)},
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        "failures": failures,
        "one_seeder": costs,
        "swarm": swarm_costs,
        "udp_lockstep": {
            "datagram_bytes": BLOCK,
            "ms_per_round_trip": r(udp_ms),
            "mb_per_s": r(BLOCK / udp_ms / 1000, 2),
        },
        "verification": {
            "seconds": r(verify_s),
            "mb_per_s": r(verify_mbps, 1),
            "share_of_swarm_time": r(verify_s / swarm_s, 4) if swarm_s else None,
        },
        "ratios": {
            "swarm_vs_single_seeder": r(single_s / swarm_s, 2) if single_s and swarm_s else None,
            "coap_per_peer_vs_raw": r(coap_mbps / raw_mbps, 3) if coap_mbps and raw_mbps else None,
            "coap_block_vs_udp_lockstep": r(block_ms / udp_ms, 1) if block_ms else None,
        },
        "goals": {"swarm_vs_single_seeder": 2.0, "coap_per_peer_vs_raw": 0.5},
    }


def _markdown_coap(r: dict[str, Any]) -> str:
    m, ratios, c, s, u = r["medians"], r["ratios"], r["one_seeder"], r["swarm"], r["udp_lockstep"]

    def num(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    lines = [
        f"### Model update transfer over CoAP (no broker): {r['pack']} ({r['pack_mb']} MB) to {r['peers']} "
        f"peers, {r['uplink_cap_mb_s']:g} MB/s uplinks (nft), median of {r['runs']}",
        "",
        "| how | all four peers | per peer |",
        "|---|---|---|",
        f"| one seeder over CoAP, one after another | {num(m['single_coap_typical_s'], '.1f')} s "
        f"(runs: {', '.join(f'{x:.1f}' for x in r['samples']['single_coap_s']) or '—'}) | "
        f"{num(m['per_peer_coap_mbps'], '.2f')} MB/s |",
        f"| swarm over CoAP | **{num(m['swarm_coap_s'], '.1f')} s** | |",
        f"| raw TCP copy, one after another (sustained rate) | {m['raw_tcp_s']:.1f} s | "
        f"{m['raw_tcp_mbps']:.1f} MB/s |",
        "",
        f"- per-peer throughput over CoAP vs raw TCP: **{num(ratios['coap_per_peer_vs_raw'], '.3f')}** "
        "(goal ≥ 0.5)",
        f"- swarm vs one seeder: **{num(ratios['swarm_vs_single_seeder'], '.2f')}x** (goal ≥ 2x); the swarm "
        f"kept {num(s['cores_busy'], '.2f')} of {r['machine']['cores']} cores busy, "
        f"{sum(s['failed_sends'])} CoAP sends failed (timed out or refused), each peer took "
        f"{num(s['message_bytes_per_peer_vs_one_seeder'], '.2f')}x the message bytes one seeder sends it",
    ]
    if c:
        lines += [
            f"- one seeder, per peer: {c['datagrams_in']:,} blocks ({c['blocks_per_s']:.0f}/s, "
            f"{c['ms_per_block']:.3f} ms each) for {c['message_bytes'] / 1e6:.1f} MB of mesh messages "
            f"({c['message_bytes_vs_pack']:.2f}x the pack: base64 chunks padded to a power of two); CPU per "
            f"block: holder {c['holder_cpu_ms_per_block']:.3f} ms, fetcher {c['fetcher_cpu_ms_per_block']:.3f} "
            f"ms ({c['cores_busy']:.2f} cores busy); slowest fetch {c['slowest_fetch_s']:.1f} s, "
            f"{c['failed_sends']} chunk messages timed out or refused",
            f"- a plain asyncio UDP lockstep of {u['datagram_bytes']}-byte datagrams between the same "
            f"namespaces: {u['ms_per_round_trip']:.3f} ms a round trip ({u['mb_per_s']:.1f} MB/s); a CoAP block "
            f"takes {ratios['coap_block_vs_udp_lockstep']:.1f}x that",
        ]
    lines += [f"- {f['case']} run {f['run']}: {f['device']} gave up ({f['reason']})" for f in r["failures"]]
    lines += [f"- after {phase}, every device heard every other one again only after {wait:.0f} s"
              for phase, wait in r.get("heard_again_after_s", {}).items() if wait >= 5]  # fmt: skip
    return "\n".join(lines)
