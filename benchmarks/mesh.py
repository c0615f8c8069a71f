"""Mesh round trips on both of Hearth's paths, side by side with raw paho through the same Mosquitto and
with a raw TLS 1.3 echo over loopback (the physical anchor of a direct link).

Two devices, two processes, as in a home: every answering side runs in its own process
(``benchmarks.mesh_echo``), the requester here, all on one event loop type. Per payload size, the stacks
take turns of `BLOCK` round trips in an order that rotates every round (so drift, and whatever one stack
leaves running, hits all of them alike):

- raw: paho clients with their network threads publish the bytes as they are (QoS as given);
- broker: Hearth nodes on aiomqtt through the same Mosquitto, on a forward-secret session (envelope
  v2: AEAD with counter nonces, keys from an EDHOC handshake made before the timed round trips);
- broker_v1: the same with the v1 envelope (Ed25519 signature per frame; sessions off): what every
  release before sessions sent, for the record;
- direct: Hearth's direct link (TLS 1.3, pinned certificate, the household handshake), one hop, the
  broker out of the data path;
- tls: a plain asyncio TLS 1.3 echo of length-prefixed frames, nothing else: what one hop costs.

Latency: one request in flight, p50/p99. Throughput: 64 requests in flight from one requester.
Goals (issue 23): direct p50 <= raw and req/s >= raw, direct within 1.3x of the TLS echo; broker p50
<= 1.5x raw and req/s >= 0.6x raw.

Streams (``failover_trials`` > 0, the int4 LLM pack): the decode rate a fridge sees through the mesh
against the serving hub's own local decode, and the failover trials of `benchmarks.failover` (the
serving hub killed mid-stream): goals tokens/s within 5% of local, gap p50 no worse than the 639 ms
measured before this work (7ea46d6, the same machine), every stream exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.common import machine, write_report
from benchmarks.mesh_echo import ECHO_SESSION, LENGTH, RAW_REQ, RAW_RESP, REQUESTER_SESSION, node_at
from benchmarks.rigs.brokers import run_mosquitto
from benchmarks.rigs.meshkit import provision
from edge_agent import aio, processes
from edge_agent.mesh.direct import DirectLinks, local_network
from edge_agent.mesh.direct.tls import client_context
from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import DirectContact

SIZES = (200, 4096, 65536)
WINDOW = 64
BLOCK = 20
"""Round trips a stack makes in a row before the next stack's turn. One each (as until b037f5f) measured
every stack just after four others had run: cold caches and their leftovers, which cost a stack in
proportion to its code rather than its path (the direct link's p50 0.28 ms there against 0.17 ms warm,
the 40-line TLS echo's 0.21 against 0.16)."""
STACKS = ("raw", "broker", "broker_v1", "direct", "tls")
GOALS = {
    # ratio name pattern -> the least it must be (every ratio: > 1 means Hearth is ahead)
    "direct_p50_vs_raw": 1.0,
    "direct_rps_vs_raw": 1.0,
    "direct_p50_vs_tls": 1 / 1.3,
    "broker_p50_vs_raw": 1 / 1.5,
    "broker_rps_vs_raw": 0.6,
    "stream_decode_vs_local": 0.95,
    "failover_gap_p50_vs_before": 1.0,
    "failover_exact": 1.0,
}
GAP_P50_BEFORE_MS = 639.0
"""Failover gap p50 at 7ea46d6 (200 trials, this machine), the figure issue 23 must not worsen."""


@contextlib.contextmanager
def echo_process(*args: str) -> Iterator[list[str]]:
    """The answering device, stopped by its PID; yields what it printed after ``ready``."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.mesh_echo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        if not words or words[0] != "ready":
            raise RuntimeError(f"mesh echo {args[0]} did not start (exit code {proc.poll()})")
        yield words[1:]
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


class AsyncRequester:
    """One of the asyncio stacks: ``send`` a payload, ``reply`` waits for the next echo."""

    def __init__(
        self,
        send: Callable[[bytes], Coroutine[Any, Any, None]],
        reply: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self.send, self.reply = send, reply

    async def round_trip(self, payload: bytes) -> float:
        t0 = time.perf_counter()
        await self.send(payload)
        async with asyncio.timeout(5):
            await self.reply()
        return time.perf_counter() - t0

    async def rate(self, payload: bytes, n: int) -> float:
        """``n`` requests with up to WINDOW in flight, each sent from its own task (concurrent callers)."""
        window = asyncio.Semaphore(WINDOW)
        sends: set[asyncio.Task[None]] = set()

        async def collect() -> None:
            for _ in range(n):
                await self.reply()
                window.release()

        t0 = time.perf_counter()
        collector = asyncio.create_task(collect())
        for _ in range(n):
            await window.acquire()
            task = asyncio.create_task(self.send(payload))
            sends.add(task)
            task.add_done_callback(sends.discard)
        async with asyncio.timeout(60):
            await collector
        return n / (time.perf_counter() - t0)


def _broker_requester(node: MeshNode, hub: str, stack: contextlib.AsyncExitStack) -> Callable[[], Any]:
    """Opens ``node``'s MQTT link (in ``stack``) and returns the requester factory for it."""

    async def make() -> AsyncRequester:
        link = node.transport
        assert link is not None
        await stack.enter_async_context(link)
        got: asyncio.Queue[Opened] = asyncio.Queue()

        async def read() -> None:  # handshake frames are taken inside receive, so it always runs
            async for item in node.receive(link):
                if isinstance(item, Opened):
                    got.put_nowait(item)

        reader = asyncio.create_task(read())
        stack.callback(reader.cancel)

        async def reply() -> None:
            await got.get()

        async def send(payload: bytes) -> None:
            await node.send(hub, Channel.REQUESTS, payload, session=ECHO_SESSION)

        return AsyncRequester(send, reply)

    return make


async def _direct_requester(
    node: MeshNode, hub: str, port: int, sha256: str, stack: contextlib.AsyncExitStack
) -> AsyncRequester:
    links = await stack.enter_async_context(
        DirectLinks(node, None, host=None, network=local_network("127.0.0.1"))
    )
    contact = DirectContact(hosts=["127.0.0.1"], port=port, tls_sha256=sha256)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Replies:
        def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
            got.put_nowait(payload)

        def link_down(self, device_id: str) -> None:
            pass

    links.carry(Replies())

    async def send(payload: bytes) -> None:
        await links.send_message(hub, contact, Channel.REQUESTS, payload)

    async def reply() -> None:
        await got.get()

    return AsyncRequester(send, reply)


async def _tls_requester(port: int, stack: contextlib.AsyncExitStack) -> AsyncRequester:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
    stack.callback(writer.close)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)

    async def send(payload: bytes) -> None:
        writer.write(LENGTH.pack(len(payload)) + payload)
        await writer.drain()

    async def reply() -> None:
        (n,) = LENGTH.unpack(await reader.readexactly(4))
        await reader.readexactly(n)

    return AsyncRequester(send, reply)


async def _run(qos: int, runs: int, rate_n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        names = ("hub", "fridge", "hub-v1", "fridge-v1")
        homes = {name: Path(tmp) / name for name in names}
        for name, home in homes.items():  # v1 in a household of its own: its inboxes are apart
            provision(homes["hub-v1" if name.endswith("v1") else "hub"], home, name, "hub")
        with (
            run_mosquitto(Path(tmp) / "broker") as broker,
            echo_process("raw", str(broker.port), "--qos", str(qos)),
            echo_process("hearth", str(broker.port), "--home", str(homes["hub"]), "--qos", str(qos)),
            echo_process(
                "hearth", str(broker.port), "--home", str(homes["hub-v1"]), "--qos", str(qos), "--v1"
            ),
            echo_process("direct", "0", "--home", str(homes["hub"])) as direct_contact,
            echo_process("tls", "0") as tls_contact,
        ):
            raw = RawRequester(broker.port, qos)
            fridge = node_at(homes["fridge"], broker.port, "mesh-req", qos, REQUESTER_SESSION)
            fridge_v1 = node_at(
                homes["fridge-v1"], broker.port, "mesh-req-v1", qos, REQUESTER_SESSION, v1=True
            )
            hub = next(c for c in fridge.membership.certs.values() if c.name == "hub").device_id
            hub_v1 = next(c for c in fridge_v1.membership.certs.values() if c.name == "hub-v1").device_id
            assert fridge.sessions is not None
            fridge.sessions.speaks(hub)  # as the hub's presence would say
            async with contextlib.AsyncExitStack() as stack:
                stacks = {
                    "broker": await _broker_requester(fridge, hub, stack)(),
                    "broker_v1": await _broker_requester(fridge_v1, hub_v1, stack)(),
                    "direct": await _direct_requester(
                        fridge, hub, int(direct_contact[0]), direct_contact[1], stack
                    ),
                    "tls": await _tls_requester(int(tls_contact[0]), stack),
                }
                for size in SIZES:
                    payload = os.urandom(size)
                    samples: dict[str, list[float]] = {name: [] for name in STACKS}
                    rounds = -(-runs // BLOCK)
                    for i in range(rounds + 1):  # round 0: warm-up (the session's handshake too)
                        # Each stack in turn makes BLOCK round trips, in an order that rotates every
                        # round: drift hits all stacks alike, and what one stack leaves behind (a
                        # PUBACK in flight, a woken thread, cold caches) lands on the first trip of
                        # the next block, which counts like the rest.
                        for name in STACKS[i % len(STACKS) :] + STACKS[: i % len(STACKS)]:
                            for _ in range(BLOCK):
                                if name == "raw":
                                    seconds = await asyncio.to_thread(raw.round_trip, payload)
                                else:
                                    seconds = await stacks[name].round_trip(payload)
                                if i > 0:
                                    samples[name].append(seconds * 1000)
                    rates = {"raw": await asyncio.to_thread(raw.rate, payload, rate_n)}
                    for name, requester in stacks.items():
                        rates[name] = await requester.rate(payload, rate_n)
                    results[str(size)] = {
                        name: {
                            "p50_ms": statistics.median(v),
                            "p99_ms": sorted(v)[int(len(v) * 0.99) - 1],
                            "requests_per_s": rates[name],
                        }
                        for name, v in samples.items()
                    }
            raw.close()
    return results


def ratios_of(per_size: dict[str, Any]) -> dict[str, float]:
    """Every goal's ratio per size, > 1 meaning Hearth is ahead of what it is compared with."""
    ratios: dict[str, float] = {}
    for size, v in per_size.items():
        ratios[f"direct_p50_vs_raw_{size}B"] = v["raw"]["p50_ms"] / v["direct"]["p50_ms"]
        ratios[f"direct_rps_vs_raw_{size}B"] = v["direct"]["requests_per_s"] / v["raw"]["requests_per_s"]
        ratios[f"direct_p50_vs_tls_{size}B"] = v["tls"]["p50_ms"] / v["direct"]["p50_ms"]
        ratios[f"broker_p50_vs_raw_{size}B"] = v["raw"]["p50_ms"] / v["broker"]["p50_ms"]
        ratios[f"broker_rps_vs_raw_{size}B"] = v["broker"]["requests_per_s"] / v["raw"]["requests_per_s"]
        ratios[f"broker_p50_vs_v1_{size}B"] = v["broker_v1"]["p50_ms"] / v["broker"]["p50_ms"]
    return ratios


def _goal_of(name: str) -> float | None:
    return GOALS.get(name, GOALS.get(name.rsplit("_", 1)[0]))


def stream_ratios(streams: dict[str, Any]) -> dict[str, float]:
    """The streams' goals as ratios, > 1 meaning Hearth is ahead."""
    ratios = {"stream_decode_vs_local": streams["ratios"]["mesh_decode_vs_local"]}
    if streams.get("gap_ms_median"):
        ratios["failover_gap_p50_vs_before"] = GAP_P50_BEFORE_MS / streams["gap_ms_median"]
    ratios["failover_exact"] = streams["exact_match"] / streams["trials"]
    return ratios


def run_mesh_bench(
    *, runs: int, qos: int, out_dir: Path, rate_n: int = 3000, failover_trials: int = 0
) -> tuple[dict[str, Any], str]:
    per_size = aio.run(_run(qos, runs, rate_n))
    ratios = ratios_of(per_size)
    streams: dict[str, Any] | None = None
    if failover_trials:
        from benchmarks.failover import trials

        with tempfile.TemporaryDirectory() as tmp:
            streams = aio.run(trials(failover_trials, Path(tmp)))
        ratios.update(stream_ratios(streams))
    goals = {
        name: {"goal": round(goal, 3), "measured": value, "met": value >= goal}
        for name, value in ratios.items()
        if (goal := _goal_of(name)) is not None
    }
    result: dict[str, Any] = {
        "benchmark": "mesh",
        "sizes": per_size,
        "streams": streams,
        "ratios": ratios,
        "goals": goals,
        "setup": {
            "runs": runs,
            "qos": qos,
            "in_flight": WINDOW,
            "rate_requests": rate_n,
            "failover_trials": failover_trials,
            **machine(),
        },
    }
    md = markdown(
        per_size, ratios, runs=runs, qos=qos, cpu=str(result["setup"].get("cpu", "?")), streams=streams
    )
    write_report(out_dir, "mesh", result, md)
    plot(out_dir / "mesh.png", per_size, qos)
    return result, md


def markdown(
    per_size: dict[str, Any],
    ratios: dict[str, float],
    *,
    runs: int,
    qos: int,
    cpu: str,
    streams: dict[str, Any] | None = None,
) -> str:
    rows = []
    for size, v in per_size.items():
        for name in STACKS:
            s = v[name]
            rows.append(
                f"| {size} B | {name} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['requests_per_s']:,.0f} |"
            )
    goal_rows = [
        f"| {name} | {value:.2f} | ≥ {goal:.2f} | {'yes' if value >= goal else 'no'} |"
        for name, value in ratios.items()
        if (goal := _goal_of(name)) is not None
    ]
    stream_lines = []
    if streams is not None:
        decode = streams["decode_tok_s"]
        stream_lines = [
            "",
            f"Streams (int4 SmolLM2, {decode['runs']} runs, paths {decode['paths']}): decode through the mesh "
            f"{decode['through_mesh']:.1f} tok/s vs {decode['local']:.1f} tok/s locally on the serving hub; "
            f"failover ({streams['trials']} trials, the serving hub killed mid-stream): "
            f"{streams['exact_match']}/{streams['trials']} exact, gap p50 {streams['gap_ms_median']:.0f} ms, "
            f"p99 {streams['gap_ms_p99']:.0f} ms (before: p50 {GAP_P50_BEFORE_MS:.0f} ms).",
        ]
    return "\n".join(
        [
            f"### Mesh round trips: both of Hearth's paths vs raw paho (same Mosquitto, QoS {qos}) and a raw TLS "
            f"1.3 echo; requester and answerers in separate processes; {runs} round trips per size and stack "
            f"(turns of {BLOCK}), {WINDOW} in flight for req/s; {cpu}",
            "",
            "| payload | stack | p50 (ms) | p99 (ms) | req/s |",
            "|---|---|---|---|---|",
            *rows,
            *stream_lines,
            "",
            "| ratio (> 1: Hearth ahead) | measured | goal | met |",
            "|---|---|---|---|",
            *goal_rows,
        ]
    )


def plot(path: Path, per_size: dict[str, Any], qos: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "raw": "#868e96",
        "broker": "#d9480f",
        "broker_v1": "#ffa94d",
        "direct": "#1971c2",
        "tls": "#40c057",
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.16
    sizes = list(per_size)
    for panel, (metric, unit) in zip(
        axes, (("p50_ms", "p50 round trip, ms"), ("requests_per_s", "req/s")), strict=True
    ):
        for k, name in enumerate(STACKS):
            values = [per_size[s][name][metric] for s in sizes]
            xs = [i + (k - 2) * width for i in range(len(sizes))]
            panel.bar(xs, values, width, label=name, color=colours[name])
        panel.set_xticks(range(len(sizes)), [f"{s} B" for s in sizes])
        panel.set_title(unit, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Mesh round trips, QoS {qos}: Hearth's broker and direct paths, raw paho, raw TLS echo", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
