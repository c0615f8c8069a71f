"""Encrypted mesh request/response vs a raw paho-mqtt round trip, through the same Mosquitto.

Raw: a paho client publishes to a topic; a paho echo client republishes to a reply topic (both with
their own network threads, as paho is normally used). Hearth: a MeshNode seals a request to a peer,
the peer opens it, seals the reply, the requester opens it (envelope v1 both ways, aiomqtt). Same
broker, same QoS, same payload sizes; round trips alternate between the two stacks. Goals: p50 within
0.5 ms of raw, and >= 2,000 requests/s (pipelined, one requester).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.brokers import run_mosquitto
from benchmarks.common import bar_plot, machine, write_report
from edge_agent.mesh import topics
from edge_agent.mesh.household import HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.node import Departed, MeshNode
from edge_agent.mesh.transports.mqtt import MqttTransport

SIZES = (200, 4096, 65536)


class RawPair:
    def __init__(self, port: int, qos: int) -> None:
        self.qos = qos
        self.got = threading.Event()
        self.echo = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-echo")
        self.req = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-req")
        self.echo.on_message = self._echo
        self.req.on_message = self._reply
        for c, sub in ((self.echo, "raw/req"), (self.req, "raw/resp")):
            c.connect("127.0.0.1", port)
            sock = c.socket()
            assert isinstance(sock, socket.socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # same as the Hearth transport
            c.subscribe(sub, qos=qos)
            c.loop_start()
        time.sleep(0.3)

    def _echo(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        client.publish("raw/resp", message.payload, qos=self.qos)

    def _reply(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.got.set()

    def round_trip(self, payload: bytes) -> float:
        self.got.clear()
        t0 = time.perf_counter()
        self.req.publish("raw/req", payload, qos=self.qos)
        if not self.got.wait(5):
            raise TimeoutError("raw round trip lost")
        return time.perf_counter() - t0

    def close(self) -> None:
        for c in (self.echo, self.req):
            c.loop_stop()
            c.disconnect()


async def _mesh_pair(port: int, qos: int, state: Path) -> tuple[MeshNode, MeshNode]:
    root = HouseholdRoot(SigningKey.generate())
    ids = {"hub": DeviceIdentity.generate(), "fridge": DeviceIdentity.generate()}
    nodes = []
    for name, ident in ids.items():
        m = Membership(root.key.verify_key)
        for n, i in ids.items():
            m.add_certificate(
                root.issue(i, name=n, profile="hub", requests=["generate"], serves=["generate"])
            )
        t = MqttTransport("127.0.0.1", port, client_id=f"mesh-{name}", qos=qos)
        nodes.append(MeshNode(ident, m, t, state / name, group_key=os.urandom(32)))
    return nodes[0], nodes[1]


async def _run(qos: int, runs: int, rate_n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, run_mosquitto(Path(tmp) / "broker") as broker:
        raw = RawPair(broker.port, qos)
        hub, fridge = await _mesh_pair(broker.port, qos, Path(tmp))
        async with hub.transport, fridge.transport:
            await hub.start()
            await fridge.start()
            hub_cert = fridge.membership.certs[hub.identity.device_id]
            req_topic = topics.requests(hub.household, hub.identity.device_id)

            async def echo() -> None:
                async for msg in hub.receive():
                    if isinstance(msg, Departed):
                        continue
                    await hub.send(
                        msg.sender, topics.responses(hub.household, msg.sender.device_id), msg.payload
                    )

            echo_task = asyncio.create_task(echo())
            replies = fridge.receive()
            for size in SIZES:
                payload = os.urandom(size)
                samples: dict[str, list[float]] = {"raw": [], "hearth": []}
                for i in range(runs + 20):
                    t_raw = await asyncio.to_thread(raw.round_trip, payload)
                    t0 = time.perf_counter()
                    await fridge.send(hub_cert, req_topic, payload)
                    await asyncio.wait_for(anext(replies), 5)
                    t_mesh = time.perf_counter() - t0
                    if i >= 20:  # warm-up
                        samples["raw"].append(t_raw * 1000)
                        samples["hearth"].append(t_mesh * 1000)
                # Throughput: keep up to 64 requests in flight from one requester.
                t0 = time.perf_counter()
                window = asyncio.Semaphore(64)
                done = 0

                async def collect(window: asyncio.Semaphore) -> None:
                    nonlocal done
                    while done < rate_n:
                        await anext(replies)
                        done += 1
                        window.release()

                collector = asyncio.create_task(collect(window))
                for _ in range(rate_n):
                    await window.acquire()
                    await fridge.send(hub_cert, req_topic, payload)
                await asyncio.wait_for(collector, 60)
                rps = rate_n / (time.perf_counter() - t0)
                results[str(size)] = {
                    name: {"p50_ms": statistics.median(v), "p99_ms": sorted(v)[int(len(v) * 0.99) - 1]}
                    for name, v in samples.items()
                } | {"hearth_requests_per_s": rps}
            echo_task.cancel()
        raw.close()
    return results


def run_mesh_bench(*, runs: int, qos: int, out_dir: Path, rate_n: int = 2000) -> tuple[dict[str, Any], str]:
    per_size = asyncio.run(_run(qos, runs, rate_n))
    small = per_size["200"]
    result: dict[str, Any] = {
        "benchmark": "mesh",
        "sizes": per_size,
        "ratios": {
            "p50_200B": small["raw"]["p50_ms"] / small["hearth"]["p50_ms"],
            "requests_per_s_vs_goal": small["hearth_requests_per_s"] / 2000,
        },
        "goals": {"p50_overhead_ms": 0.5, "requests_per_s": 2000},
        "setup": {"runs": runs, "qos": qos, **machine()},
    }
    rows = [
        f"| {size} B | {v['raw']['p50_ms']:.3f} | {v['raw']['p99_ms']:.3f} | {v['hearth']['p50_ms']:.3f} | "
        f"{v['hearth']['p99_ms']:.3f} | {v['hearth']['p50_ms'] - v['raw']['p50_ms']:+.3f} | {v['hearth_requests_per_s']:.0f} |"
        for size, v in per_size.items()
    ]
    md = "\n".join(
        [
            f"### Mesh: encrypted request/response vs raw paho round trip, same Mosquitto, QoS {qos}, {runs} round trips per size",
            "",
            "| payload | raw p50 (ms) | raw p99 (ms) | Hearth p50 (ms) | Hearth p99 (ms) | p50 overhead (ms, goal <= 0.5) | Hearth req/s (goal >= 2000) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_report(out_dir, "mesh", result, md)
    bar_plot(
        out_dir / "mesh.png",
        f"Mesh round trip, QoS {qos}",
        {f"{s} B p50": (v["hearth"]["p50_ms"], v["raw"]["p50_ms"], "ms") for s, v in per_size.items()},
        ("Hearth (sealed)", "raw paho"),
    )
    return result, md
