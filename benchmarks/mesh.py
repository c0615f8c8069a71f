"""Encrypted mesh request/response vs a raw paho-mqtt round trip, through the same Mosquitto.

Two devices, two processes, as in a home: the answering side runs in its own process
(``benchmarks.mesh_echo``), the requester here. Raw: paho clients with their network threads publish
the bytes as they are. Hearth: MeshNodes on aiomqtt; the requester seals each request to the peer
(sign + encrypt), the peer opens it, seals the reply back, the requester opens that (envelope v1 both
ways). Same broker, same QoS, same payload sizes; round trips alternate between the stacks.

Latency: one request in flight, p50/p99. Throughput: 64 requests in flight from one requester.
Goals (issue 3): p50 within 0.5 ms of raw, and >= 2,000 requests/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.common import bar_plot, machine, write_report
from benchmarks.mesh_echo import ECHO_SESSION, RAW_REQ, RAW_RESP, REQUESTER_SESSION, node_at
from benchmarks.rigs.brokers import run_mosquitto
from benchmarks.rigs.meshkit import provision
from edge_agent import aio, processes
from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.node import MeshNode

SIZES = (200, 4096, 65536)
WINDOW = 64
GOAL_OVERHEAD_MS, GOAL_RPS = 0.5, 2000


@contextlib.contextmanager
def echo_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The answering device, stopped by its PID."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.mesh_echo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"mesh echo {args[0]} did not start (exit code {proc.poll()})")
        yield proc
    finally:
        processes.stop(proc, timeout=10)


class RawRequester:
    def __init__(self, port: int, qos: int) -> None:
        self.qos = qos
        self.got = threading.Event()
        self.window = threading.Semaphore(WINDOW)
        self.received = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-req")
        self.client.on_message = self._reply
        self.client.connect("127.0.0.1", port)
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # same as the Hearth transport
        self.client.subscribe(RAW_RESP, qos=qos)
        self.client.loop_start()
        time.sleep(0.3)

    def _reply(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.received += 1
        self.window.release()
        self.got.set()

    def round_trip(self, payload: bytes) -> float:
        self.got.clear()
        t0 = time.perf_counter()
        self.client.publish(RAW_REQ, payload, qos=self.qos)
        if not self.got.wait(5):
            raise TimeoutError("raw round trip lost")
        return time.perf_counter() - t0

    def rate(self, payload: bytes, n: int) -> float:
        self.received = 0
        t0 = time.perf_counter()
        for _ in range(n):
            self.window.acquire()
            self.client.publish(RAW_REQ, payload, qos=self.qos)
        end = time.monotonic() + 60
        while self.received < n and time.monotonic() < end:
            time.sleep(0.0005)
        if self.received < n:
            raise TimeoutError(f"raw: only {self.received} of {n} replies")
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _run(qos: int, runs: int, rate_n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        homes = {name: Path(tmp) / name for name in ("hub", "fridge")}
        for name, home in homes.items():
            provision(homes["hub"], home, name, "hub")
        with (
            run_mosquitto(Path(tmp) / "broker") as broker,
            echo_process("raw", str(broker.port), "--qos", str(qos)),
            echo_process("hearth", str(broker.port), "--home", str(homes["hub"]), "--qos", str(qos)),
        ):
            raw = RawRequester(broker.port, qos)
            fridge = node_at(homes["fridge"], broker.port, "mesh-req", qos, REQUESTER_SESSION)
            hub = next(c for c in fridge.membership.certs.values() if c.name == "hub").device_id
            link = fridge.transport
            assert link is not None
            async with link:
                replies = fridge.receive(link)

                async def reply() -> None:
                    while not isinstance(await anext(replies), Opened):
                        pass

                for size in SIZES:
                    payload = os.urandom(size)
                    samples: dict[str, list[float]] = {"raw": [], "hearth": []}
                    for i in range(runs + 20):
                        t_raw = await asyncio.to_thread(raw.round_trip, payload)
                        t0 = time.perf_counter()
                        await fridge.send(hub, Channel.REQUESTS, payload, session=ECHO_SESSION)
                        async with asyncio.timeout(5):
                            await reply()
                        t_mesh = time.perf_counter() - t0
                        if i >= 20:  # warm-up
                            samples["raw"].append(t_raw * 1000)
                            samples["hearth"].append(t_mesh * 1000)
                    raw_rps = await asyncio.to_thread(raw.rate, payload, rate_n)
                    hearth_rps = await _hearth_rate(fridge, hub, payload, rate_n, reply)
                    results[str(size)] = {
                        name: {"p50_ms": statistics.median(v), "p99_ms": sorted(v)[int(len(v) * 0.99) - 1]}
                        for name, v in samples.items()
                    }
                    results[str(size)]["raw"]["requests_per_s"] = raw_rps
                    results[str(size)]["hearth"]["requests_per_s"] = hearth_rps
            raw.close()
    return results


async def _hearth_rate(fridge: MeshNode, hub: str, payload: bytes, n: int, reply: Any) -> float:
    """``n`` requests with up to WINDOW in flight, each sent from its own task (concurrent callers)."""
    window = asyncio.Semaphore(WINDOW)
    sends: set[asyncio.Task[None]] = set()

    async def collect() -> None:
        for _ in range(n):
            await reply()
            window.release()

    t0 = time.perf_counter()
    collector = asyncio.create_task(collect())
    for _ in range(n):
        await window.acquire()
        task = asyncio.create_task(fridge.send(hub, Channel.REQUESTS, payload, session=ECHO_SESSION))
        sends.add(task)
        task.add_done_callback(sends.discard)
    async with asyncio.timeout(60):
        await collector
    return n / (time.perf_counter() - t0)


def run_mesh_bench(*, runs: int, qos: int, out_dir: Path, rate_n: int = 3000) -> tuple[dict[str, Any], str]:
    per_size = aio.run(_run(qos, runs, rate_n))
    small = per_size["200"]
    overhead = small["hearth"]["p50_ms"] - small["raw"]["p50_ms"]
    result: dict[str, Any] = {
        "benchmark": "mesh",
        "sizes": per_size,
        # > 1 means Hearth is ahead of raw paho; sealing costs something, so expect a little under 1.
        "ratios": {
            "p50_latency_200B": small["raw"]["p50_ms"] / small["hearth"]["p50_ms"],
            "requests_per_s_200B": small["hearth"]["requests_per_s"] / small["raw"]["requests_per_s"],
        },
        "goals": {
            "p50_overhead_ms": {
                "goal": GOAL_OVERHEAD_MS,
                "measured": overhead,
                "met": overhead <= GOAL_OVERHEAD_MS,
            },
            "requests_per_s": {
                "goal": GOAL_RPS,
                "measured": small["hearth"]["requests_per_s"],
                "met": small["hearth"]["requests_per_s"] >= GOAL_RPS,
            },
        },
        "setup": {"runs": runs, "qos": qos, "in_flight": WINDOW, "rate_requests": rate_n, **machine()},
    }
    rows = [
        f"| {size} B | {v['raw']['p50_ms']:.3f} | {v['hearth']['p50_ms']:.3f} | "
        f"{v['hearth']['p50_ms'] - v['raw']['p50_ms']:+.3f} | {v['raw']['p99_ms']:.3f} | {v['hearth']['p99_ms']:.3f} | "
        f"{v['raw']['requests_per_s']:,.0f} | {v['hearth']['requests_per_s']:,.0f} |"
        for size, v in per_size.items()
    ]
    md = "\n".join(
        [
            f"### Mesh: sealed request/response vs raw paho, same Mosquitto, QoS {qos}, requester and answerer in "
            f"separate processes, {runs} round trips per size, {WINDOW} in flight for req/s",
            "",
            "| payload | raw p50 (ms) | Hearth p50 (ms) | overhead (goal ≤ +0.5) | raw p99 | Hearth p99 | raw req/s | Hearth req/s (goal ≥ 2,000) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_report(out_dir, "mesh", result, md)
    bar_plot(
        out_dir / "mesh.png",
        f"Mesh round trip, QoS {qos}",
        {f"{s} B p50": (v["hearth"]["p50_ms"], v["raw"]["p50_ms"], "ms") for s, v in per_size.items()}
        | {
            f"{s} B req/s": (v["hearth"]["requests_per_s"], v["raw"]["requests_per_s"], "req/s")
            for s, v in per_size.items()
        },
        ("Hearth (sealed)", "raw paho"),
    )
    return result, md
