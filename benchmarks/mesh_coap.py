"""Mesh round trips over CoAP (issue 24): OSCORE vs plain aiocoap, Hearth over CoAP vs over MQTT.

    hearth bench mesh --transport coap [--json] [--out DIR] [--runs N] [--qos 0|1]

Two devices, two processes, as in a home: every answering side runs in its own process
(``benchmarks.mesh_coap_echo``, and ``benchmarks.mesh_echo`` for the two MQTT stacks), the requester
here, all on loopback and on one event loop type (uvloop). Per payload size (200 B, 4 KB, 64 KB) the
stacks take turns of `BLOCK` round trips in an order that rotates every round, as in `benchmarks.mesh`:

- raw: paho clients through Mosquitto publishing the bytes as they are (QoS as given), two hops;
- hearth_mqtt: Hearth's broker path through the same Mosquitto (envelope v2 on a forward-secret session);
- coap_plain: an aiocoap POST to an echo resource that answers the bytes it got, no security
  (block-wise both ways past 1 KB, aiocoap's own);
- aiocoap_oscore: the same request and resource protected by aiocoap's OSCORE, the two contexts
  (`MemoryContext`) keyed from one real Hearth session handshake (RFC 9528 A.1);
- coap_oscore: Hearth's OSCORE (`coap.protection`) on its message lane (`coap.lane`), keyed from
  another handshake: a POST answered with the bytes it carried (in the answer while one datagram
  carries them, else POSTed back: the lane answers without Block2), requester and echo each a lane on
  an aiocoap endpoint's socket;
- hearth_coap: Hearth over CoAP, one hop: two Hearth nodes, each a `CoapLinks` + `CoapTransport` on
  127.0.0.1, the request sent with ``links.send_message`` on the requests channel and echoed with
  ``send_message`` on the responses channel: the session (its handshake over CoAP before the timed
  trips), OSCORE, the membership check, freshness, the hand-off to the message layer;
- hearth_coap_envelope: the design not shipped, measured for the decision: the v2-sealed envelope frame
  (``sessions.seal``) carried inside OSCORE instead of the plain message, opened with ``sessions.open``.
  Done in the benchmark only (the frame is the payload ``send_message`` carries, so its 8-byte timestamp
  is there twice: 16 bytes a round trip that design would not send, left in the byte counts).

Latency: one request in flight, p50/p99 (`DEFAULT_RUNS`, a fifth of them at 64 KB). Throughput: up to
`WINDOW` requests in flight from one requester (`COAP_RATE_REQUESTS`, `MQTT_RATE_REQUESTS`), requests/s;
for the two aiocoap stacks also with non-confirmable requests (aiocoap sends one confirmable message at a
time to a peer, NSTART = 1: a backlog, not a window).
Bytes on the wire per request (request and response, every datagram or segment of both): for the CoAP
stacks the UDP payloads (the CoAP messages) counted at the requester's socket, which every datagram of
the exchange crosses; for the MQTT stacks the TCP payloads (MQTT packets) of both hops, counted by a
relay in front of Mosquitto (`RecordingRelay`). IP, UDP and TCP headers and TCP's own ACKs are not in
either count.

Goals (``ratios``, > 1 always meaning Hearth ahead): ``oscore_p50_vs_plain`` = 1.5 * plain p50 / Hearth's
OSCORE p50 (≥ 1 ⇔ OSCORE p50 ≤ 1.5x plain CoAP); ``coap_p50_vs_raw`` = raw p50 / Hearth-over-CoAP p50 (≥ 1 ⇔
one hop of Hearth no slower than raw paho's two). Reported without a goal: ``coap_rps_vs_raw``,
``oscore_only_vs_envelope_p50`` (envelope-inside p50 / OSCORE-only p50), ``coap_p50_vs_mqtt`` (Hearth over
MQTT / over CoAP) and ``coap_bytes_vs_mqtt`` (MQTT's bytes / CoAP's, Hearth both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import CHANGED, NON, POST, Message
from aiocoap.message import UndecidedRemote
from aiocoap.transports.oscore import OSCOREAddress
from aiocoap.util import socknumbers

from benchmarks.common import machine, write_report
from benchmarks.mesh import (
    BLOCK,
    SIZES,
    WINDOW,
    AsyncRequester,
    RawRequester,
    _broker_requester,
)
from benchmarks.mesh_coap_echo import ECHO_PATH
from benchmarks.mesh_echo import ECHO_SESSION, REQUESTER_SESSION, node_at
from benchmarks.rigs.aiocoap_oscore import MemoryContext
from benchmarks.rigs.brokers import RecordingRelay, run_mosquitto
from benchmarks.rigs.meshkit import provision
from edge_agent import aio, processes
from edge_agent.mesh.assembly import MemberKeys, build_node
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import CoapContact
from edge_agent.mesh.sessions.credentials import RunCredential, verify_statement
from edge_agent.mesh.sessions.handshake import Initiator, Responder
from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.sessions.pending import context_of
from edge_agent.mesh.settings import CoapSettings
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.coap.asking import ask
from edge_agent.mesh.transports.coap.lane import MessageLane
from edge_agent.mesh.transports.coap.links import CoapLinks
from edge_agent.mesh.transports.coap.protection import OscoreContext
from edge_agent.mesh.transports.coap.quirks import server_context, udp_interface

STACKS = (
    "raw",
    "hearth_mqtt",
    "coap_plain",
    "aiocoap_oscore",
    "coap_oscore",
    "hearth_coap",
    "hearth_coap_envelope",
)
COAP_STACKS = STACKS[2:]
MQTT_STACKS = STACKS[:2]
DEFAULT_RUNS = 100
"""Round trips per stack at 200 B and 4 KB by default, a fifth of them at 64 KB (`Plan.runs_for`): fewer
than the MQTT benchmark's 300, as a 64 KB round trip over CoAP is 128 block exchanges or more in
lockstep (0.1-0.4 s), and four stacks make them."""
LARGE, LARGE_SHARE = 16384, 5
"""Payloads over LARGE bytes get 1/LARGE_SHARE of the round trips."""
COAP_RATE_REQUESTS = {200: 1000, 4096: 100, 65536: 10}
"""Requests per throughput run of a CoAP stack, by payload size (a few seconds each at the slowest)."""
MQTT_RATE_REQUESTS = 1000
"""Requests per throughput run of the two MQTT stacks (well under a second each, at any size)."""
BYTES_TRIPS = 3
"""Round trips counted for the bytes on the wire (after two uncounted ones: the session's handshake)."""
WARMUP = 3
"""Uncounted round trips per stack before the first counted round (and the session's handshake)."""
ONE_BLOCK = 1024
"""aiocoap's block size (SZX 6): a longer message goes block-wise."""
OSCORE_ALLOWANCE = 1.5
"""The issue's bound: OSCORE p50 at most 1.5x plain CoAP's."""
GOALS = {"oscore_p50_vs_plain": 1.0, "coap_p50_vs_raw": 1.0}
TIMEOUT_S = 30.0
INDEXES = (0x0B000001, 0x0B000002)
"""Session indexes (the OSCORE ids) of the OSCORE stacks' handshakes: initiator's, responder's."""


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    runs: int = DEFAULT_RUNS
    sizes: tuple[int, ...] = SIZES
    coap_rate: dict[int, int] = field(default_factory=lambda: dict(COAP_RATE_REQUESTS))
    mqtt_rate: int = MQTT_RATE_REQUESTS
    bytes_trips: int = BYTES_TRIPS

    def runs_for(self, size: int) -> int:
        return self.runs if size <= LARGE else max(1, self.runs // LARGE_SHARE)

    def rate_for(self, name: str, size: int) -> int:
        return self.mqtt_rate if name in MQTT_STACKS else self.coap_rate[size]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def answering(module: str, *args: str, stdin: str | None = None) -> Iterator[list[str]]:
    """An answering device (``python -m module args``), stopped by its PID, its pipes closed; yields what
    it printed after ``ready``. ``benchmarks.mesh.echo_process`` does the same for ``benchmarks.mesh_echo``
    but leaves its stdout pipe to the garbage collector (a ResourceWarning, an error under pytest)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, AIOCOAP_REUSE_PORT="0"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    with proc.stdin, proc.stdout:
        try:
            if stdin is not None:
                proc.stdin.write(stdin + "\n")
                proc.stdin.flush()
            words = proc.stdout.readline().split()
            if not words or words[0] != "ready":
                raise RuntimeError(f"{module} {args[0]} did not start (exit code {proc.poll()})")
            yield words[1:]
        finally:
            processes.stop(proc, timeout=10)


def mqtt_echo_process(*args: str) -> contextlib.AbstractContextManager[list[str]]:
    """One of ``benchmarks.mesh_echo``'s answering sides (raw paho, or a Hearth node on MQTT)."""
    return answering("benchmarks.mesh_echo", *args)


@contextlib.contextmanager
def coap_echo_process(*args: str, stdin: str | None = None) -> Iterator[int]:
    """One of ``benchmarks.mesh_coap_echo``'s answering sides; yields the UDP port it answers on."""
    with answering("benchmarks.mesh_coap_echo", *args, stdin=stdin) as words:
        yield int(words[0])


async def windowed_rate(ask: Callable[[], Awaitable[None]], n: int) -> float:
    """Requests per second of ``n`` calls of ``ask`` with up to WINDOW in flight, each its own task."""
    window = asyncio.Semaphore(WINDOW)

    async def one() -> None:
        try:
            await ask()
        finally:
            window.release()

    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    for _ in range(n):
        await window.acquire()
        tasks.append(asyncio.create_task(one()))
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks)
    return n / (time.perf_counter() - t0)


class UdpCount:
    """The UDP payloads (CoAP messages) an aiocoap context's sockets send and receive, counted while
    ``on``: with two endpoints on loopback, every datagram of an exchange crosses the requester's."""

    def __init__(self, context: aiocoap.Context, lane: MessageLane | None = None) -> None:
        self.on = False
        self.lane = lane
        """A message lane on the same socket: it sends past aiocoap's transport (its own count)."""
        self._sent = self.received = self._datagrams = 0
        self._lane_at = (0, 0)
        interfaces = [
            getattr(getattr(ri, "token_interface", None), "message_interface", None)
            for ri in context.request_interfaces
        ]
        found = [mi for mi in interfaces if hasattr(mi, "datagram_msg_received") and hasattr(mi, "transport")]
        if not found:
            raise RuntimeError("no UDP interface in this aiocoap context")
        for mi in found:
            self._wrap(mi)

    def _wrap(self, interface: Any) -> None:
        sendmsg, received = interface.transport.sendmsg, interface.datagram_msg_received

        def counted_sendmsg(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
            if self.on:
                self._sent += len(data)
                self._datagrams += 1
            sendmsg(data, ancdata, flags, address)

        def counted_received(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
            if self.on:
                self.received += len(data)
                self._datagrams += 1
            received(data, ancdata, flags, address)

        interface.transport.sendmsg = counted_sendmsg
        interface.datagram_msg_received = counted_received

    def _lane_now(self) -> tuple[int, int]:
        return (self.lane.traffic.sent_bytes, self.lane.traffic.sent) if self.lane is not None else (0, 0)

    @property
    def sent(self) -> int:
        return self._sent + self._lane_now()[0] - self._lane_at[0]

    @property
    def datagrams(self) -> int:
        return self._datagrams + self._lane_now()[1] - self._lane_at[1]

    def reset(self) -> None:
        self._sent = self.received = self._datagrams = 0
        self._lane_at = self._lane_now()


class LaneRequester:
    """The coap_oscore stack's requester: Hearth's OSCORE on its own message lane (on an aiocoap
    endpoint's socket, as in `CoapLinks`); answers longer than one datagram come back as a POST."""

    def __init__(self, context: OscoreContext, echo_port: int) -> None:
        self.context = context
        self.echo = ("::ffff:127.0.0.1", echo_port, 0, 0)
        self.backs: asyncio.Queue[bytes] = asyncio.Queue()
        self.lane = MessageLane(keys=lambda kid: context, handle=self._posted_back, max_body=1 << 20)
        self.budget = self.lane.budget("127.0.0.1")
        self.server: aiocoap.Context | None = None

    def _posted_back(self, context: OscoreContext, path: tuple[bytes, ...], body: bytes) -> bytes:
        self.backs.put_nowait(body)
        return b""

    async def start(self, port: int, stack: contextlib.AsyncExitStack) -> None:
        self.server = await server_context(aiocoap.resource.Site(), ("127.0.0.1", port), [])
        stack.push_async_callback(self.server.shutdown)
        self.lane.attach(udp_interface(self.server))
        stack.callback(self.lane.detach)

    async def ask(self, payload: bytes) -> None:
        path = tuple(part.encode() for part in ECHO_PATH)
        answer = await self.lane.post(
            self.echo, self.context, path, payload, budget=self.budget, timeout=TIMEOUT_S
        )
        if payload and not answer:
            answer = await self.backs.get()  # the echo POSTed it back (one datagram did not carry it)
        if len(answer) != len(payload):
            raise RuntimeError(f"echo answered {len(answer)} bytes for {len(payload)}")

    async def round_trip(self, payload: bytes) -> float:
        t0 = time.perf_counter()
        await self.ask(payload)
        return time.perf_counter() - t0

    async def rate(self, payload: bytes, n: int) -> float:
        return await windowed_rate(lambda: self.ask(payload), n)


class CoapRequester:
    """The aiocoap stacks' requester: POST /echo, optionally OSCORE-protected (``security``).

    In the throughput runs a request longer than one block carries a Request-Tag of its own (RFC 9175):
    aiocoap 0.4.17 does not tag block-wise requests, and the server assembles Block1 bodies by endpoint,
    method and options, so two concurrent uploads from one endpoint to one resource interleave into one
    body (5.00). One at a time (latency, bytes) needs no tag, and gets none."""

    def __init__(self, context: aiocoap.Context, port: int, security: MemoryContext | None = None) -> None:
        self.context = context
        self.host = f"127.0.0.1:{port}"
        self.security = security
        self.tags = 0

    def _request(self, payload: bytes, non: bool, tag: bool) -> Message:
        request = Message(code=POST, payload=payload)
        if non:
            request.mtype = NON
        if tag and len(payload) > ONE_BLOCK:
            self.tags += 1
            request.opt.request_tag = [self.tags.to_bytes((self.tags.bit_length() + 7) // 8, "big")]
        remote = UndecidedRemote("coap", self.host)
        request.remote = remote if self.security is None else OSCOREAddress(self.security, remote)
        request.opt.uri_path = ECHO_PATH
        return request

    async def ask(self, payload: bytes, non: bool = False, tag: bool = False) -> None:
        request = self._request(payload, non, tag)
        response = await ask(self.context, request, timeout=TIMEOUT_S, blockwise=True)
        if response.code != CHANGED or len(response.payload) != len(payload):
            raise RuntimeError(f"echo answered {response.code} with {len(response.payload)} bytes")

    async def round_trip(self, payload: bytes) -> float:
        t0 = time.perf_counter()
        await self.ask(payload)
        return time.perf_counter() - t0

    async def rate(self, payload: bytes, n: int, non: bool = False) -> float:
        """``n`` requests with up to WINDOW in flight, each its own task (concurrent callers)."""
        return await windowed_rate(lambda: self.ask(payload, non, tag=True), n)


def oscore_pair(requester_home: Path, responder_home: Path) -> tuple[OscoreMaterial, str, dict[str, str]]:
    """One session handshake between two members, run here as the session layer runs it (the requester
    initiating): the requester's OSCORE keys and its peer, and the responder's keys as the echo process
    takes them (a new handshake each call: fresh keys, so no two contexts ever share a nonce)."""
    fridge = MemberKeys.load(HouseholdState(requester_home))
    hub = MemberKeys.load(HouseholdState(responder_home))
    household = fridge.membership.household_id
    fridge_id, hub_id = fridge.identity.device_id, hub.identity.device_id
    i_run, r_run = REQUESTER_SESSION, ECHO_SESSION
    initiator = Initiator(RunCredential.make(fridge.identity, household, i_run, aes=True), hub_id, INDEXES[0])
    responder = Responder(RunCredential.make(hub.identity, household, r_run, aes=True), fridge_id, INDEXES[1])
    context = context_of(household, fridge_id, hub_id, i_run, r_run)
    message_3, mine = initiator.message_3(
        responder.message_2(initiator.message_1()),
        lambda ccs, statement: verify_statement(hub.certificate, household, r_run, ccs, statement),
        context,
    )
    theirs = responder.finish(
        message_3,
        lambda ccs, statement: verify_statement(fridge.certificate, household, i_run, ccs, statement),
        context,
    )
    keys = theirs.oscore
    return (
        mine.oscore,
        hub_id,
        {
            "secret": keys.master_secret.hex(),
            "salt": keys.master_salt.hex(),
            "sid": keys.sender_id.hex(),
            "rid": keys.recipient_id.hex(),
            "peer": fridge_id,
        },
    )


async def hearth_coap_requesters(
    home: Path, port: int, echoes: dict[str, tuple[Path, int]], stack: contextlib.AsyncExitStack
) -> tuple[dict[str, AsyncRequester], CoapLinks]:
    """The requesting Hearth device on its CoAP transport (in ``stack``), one requester per echo device
    (``echoes``: stack name -> that device's home and port; "hearth_coap_envelope" seals and opens)."""
    node = build_node(HouseholdState(home))
    node.session = REQUESTER_SESSION
    sessions = node.sessions
    assert sessions is not None
    devices = {name: MemberKeys.load(HouseholdState(h)).certificate for name, (h, _) in echoes.items()}
    settings = CoapSettings(
        bind="127.0.0.1",
        port=port,
        seeds=[("127.0.0.1", p) for _, p in echoes.values()],
        min_fetch_interval_s=0.0,
        rediscover_s=3600.0,
    )
    links = CoapLinks(node, settings)
    transport = links.connect(None)
    node.transport = transport
    for name, cert in devices.items():
        # What each echo device's verified presence would teach: its certificate, where it answers CoAP,
        # that it speaks v2.
        node.membership.add_certificate(cert)
        links.book.learn(cert.device_id, CoapContact(hosts=["127.0.0.1"], port=echoes[name][1]))
        sessions.speaks(cert.device_id)
    await stack.enter_async_context(transport)

    async def frames() -> None:  # session handshakes arrive as sealed frames in the inbox
        async for _ in node.receive(transport):
            pass

    reader = asyncio.create_task(frames())
    stack.callback(reader.cancel)
    got = {cert.device_id: asyncio.Queue[bytes]() for cert in devices.values()}
    sealed_to = devices.get("hearth_coap_envelope")
    own_responses = str(node.address(node.device_id, Channel.RESPONSES))

    class Replies:
        def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
            if sealed_to is not None and device_id == sealed_to.device_id:
                assert sessions is not None
                payload = sessions.open(payload, own_responses).payload
            got[device_id].put_nowait(payload)

        def link_down(self, device_id: str) -> None:
            pass

    links.carry(Replies())

    def requester(device: str, envelope: bool) -> AsyncRequester:
        inbox = str(node.address(device, Channel.REQUESTS))

        async def send(payload: bytes) -> None:
            if envelope:
                assert sessions is not None
                payload = await sessions.seal(node.recipient(device), ECHO_SESSION, inbox, payload)
            await links.send_message(device, None, Channel.REQUESTS, payload, session=ECHO_SESSION)

        async def reply() -> None:
            await got[device].get()

        return AsyncRequester(send, reply)

    return {
        name: requester(cert.device_id, name == "hearth_coap_envelope") for name, cert in devices.items()
    }, links


Trip = Callable[[bytes], Any]


async def _count_trips(
    trip: Trip, payload: bytes, trips: int, read: Callable[[], tuple[int, ...]]
) -> list[int]:
    """What ``read`` counts over ``trips`` round trips (after two uncounted ones), per round trip."""
    for _ in range(2):
        await trip(payload)
    await asyncio.sleep(0.1)  # the last ACKs of the warm-up land before the count starts
    before = read()
    for _ in range(trips):
        await trip(payload)
    await asyncio.sleep(0.1)  # and those of the counted trips before it ends
    return [round((b - a) / trips) for a, b in zip(before, read(), strict=True)]


async def mqtt_bytes(
    broker_port: int, homes: dict[str, Path], qos: int, sizes: tuple[int, ...], trips: int
) -> dict[str, dict[str, dict[str, int]]]:
    """TCP payload bytes per round trip of the two MQTT stacks, both hops, through a counting relay in
    front of Mosquitto (their own echo processes: the timed ones are not slowed by it)."""
    found: dict[str, dict[str, dict[str, int]]] = {str(size): {} for size in sizes}
    async with RecordingRelay(broker_port) as relay, contextlib.AsyncExitStack() as stack:
        hop = str(relay.port)
        with contextlib.ExitStack() as procs:
            for args in (
                ("raw", hop, "--qos", str(qos)),
                ("hearth", hop, "--home", str(homes["hub"]), "--qos", str(qos)),
            ):  # in a thread: the relay (on this loop) carries their CONNACK before they are ready
                await asyncio.to_thread(procs.enter_context, mqtt_echo_process(*args))
            raw = await asyncio.to_thread(RawRequester, relay.port, qos)
            stack.push_async_callback(asyncio.to_thread, raw.close)
            fridge = node_at(homes["fridge"], relay.port, "mesh-req-bytes", qos, REQUESTER_SESSION)
            hub = MemberKeys.load(HouseholdState(homes["hub"])).identity.device_id
            assert fridge.sessions is not None
            fridge.sessions.speaks(hub)
            hearth = await _broker_requester(fridge, hub, stack)()

            async def raw_trip(payload: bytes) -> None:
                await asyncio.to_thread(raw.round_trip, payload)

            for size in sizes:
                payload = os.urandom(size)
                for name, trip in (("raw", raw_trip), ("hearth_mqtt", hearth.round_trip)):
                    (wire,) = await _count_trips(trip, payload, trips, lambda: (len(relay.seen),))
                    found[str(size)][name] = {"wire_bytes": wire}
            await stack.aclose()
    return found


async def coap_bytes(
    requesters: dict[str, Any], counts: dict[str, UdpCount], sizes: tuple[int, ...], trips: int
) -> dict[str, dict[str, dict[str, int]]]:
    found: dict[str, dict[str, dict[str, int]]] = {str(size): {} for size in sizes}
    for size in sizes:
        payload = os.urandom(size)
        for name in COAP_STACKS:
            count = counts[name]

            def read(count: UdpCount = count) -> tuple[int, ...]:
                return count.sent, count.received, count.datagrams

            count.reset()
            count.on = True
            try:
                sent, received, datagrams = await _count_trips(
                    requesters[name].round_trip, payload, trips, read
                )
            finally:
                count.on = False
            found[str(size)][name] = {
                "wire_bytes": sent + received,
                "sent": sent,
                "received": received,
                "datagrams": datagrams,
            }
    return found


def _summary(samples: list[float], rate: float) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)],
        "requests_per_s": rate,
    }


async def _run(qos: int, plan: Plan) -> dict[str, Any]:
    os.environ["AIOCOAP_REUSE_PORT"] = "0"
    socknumbers.HAS_RECVERR = False  # as `CoapTransport` sets it, for every aiocoap socket in the process
    results: dict[str, Any] = {"sizes": {}, "non_confirmable_rps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        names = ("hub", "fridge", "fridge-coap", "hub-coap", "hub-env")
        homes = {name: Path(tmp) / name for name in names}
        for name, home in homes.items():  # the echo devices after the requester: they know its certificate
            provision(homes["hub"], home, name, "hub")
        fridge_coap = MemberKeys.load(HouseholdState(homes["fridge-coap"])).identity.device_id
        requester_port = _free_udp_port()
        oscore_mine, oscore_peer, oscore_keys = oscore_pair(homes["fridge-coap"], homes["hub-coap"])
        lane_mine, lane_peer, lane_keys = oscore_pair(homes["fridge-coap"], homes["hub-coap"])
        lane_port = _free_udp_port()
        hearth_echo = ("hearth", "--peer", fridge_coap, "--peer-port", str(requester_port), "--home")
        with run_mosquitto(Path(tmp) / "broker") as broker:
            results["bytes_per_request"] = await mqtt_bytes(
                broker.port, homes, qos, plan.sizes, plan.bytes_trips
            )
            with (
                mqtt_echo_process("raw", str(broker.port), "--qos", str(qos)),
                mqtt_echo_process("hearth", str(broker.port), "--home", str(homes["hub"]), "--qos", str(qos)),
                coap_echo_process("plain") as plain_port,
                coap_echo_process("oscore", stdin=json.dumps(oscore_keys)) as oscore_port,
                coap_echo_process(
                    "lane", "--peer-port", str(lane_port), stdin=json.dumps(lane_keys)
                ) as lane_echo,
                coap_echo_process(*hearth_echo, str(homes["hub-coap"])) as hearth_port,
                coap_echo_process(*hearth_echo, str(homes["hub-env"]), "--envelope") as envelope_port,
            ):
                raw = RawRequester(broker.port, qos)
                fridge = node_at(homes["fridge"], broker.port, "mesh-req", qos, REQUESTER_SESSION)
                hub = MemberKeys.load(HouseholdState(homes["hub"])).identity.device_id
                assert fridge.sessions is not None
                fridge.sessions.speaks(hub)  # as the hub's presence would say
                async with contextlib.AsyncExitStack() as stack:
                    plain_context = await aiocoap.Context.create_client_context(transports=["udp6"])
                    stack.push_async_callback(plain_context.shutdown)
                    oscore_context = await aiocoap.Context.create_client_context(
                        transports=["oscore", "udp6"]
                    )
                    stack.push_async_callback(oscore_context.shutdown)
                    hearth, links = await hearth_coap_requesters(
                        homes["fridge-coap"],
                        requester_port,
                        {
                            "hearth_coap": (homes["hub-coap"], hearth_port),
                            "hearth_coap_envelope": (homes["hub-env"], envelope_port),
                        },
                        stack,
                    )
                    assert links.context is not None
                    hearth_count = UdpCount(links.context, links.lane)
                    lane = LaneRequester(OscoreContext(lane_mine, lane_peer), lane_echo)
                    await lane.start(lane_port, stack)
                    assert lane.server is not None
                    counts = {
                        "coap_plain": UdpCount(plain_context),
                        "aiocoap_oscore": UdpCount(oscore_context),
                        "coap_oscore": UdpCount(lane.server, lane.lane),
                        "hearth_coap": hearth_count,
                        "hearth_coap_envelope": hearth_count,
                    }
                    coap: dict[str, CoapRequester] = {
                        "coap_plain": CoapRequester(plain_context, plain_port),
                        "aiocoap_oscore": CoapRequester(
                            oscore_context, oscore_port, MemoryContext(oscore_mine, oscore_peer)
                        ),
                    }
                    stacks: dict[str, Any] = {
                        "hearth_mqtt": await _broker_requester(fridge, hub, stack)(),
                        **coap,
                        "coap_oscore": lane,
                        **hearth,
                    }
                    coap_wire = await coap_bytes(stacks, counts, plan.sizes, plan.bytes_trips)
                    for size in plan.sizes:
                        results["bytes_per_request"][str(size)].update(coap_wire[str(size)])
                        results["sizes"][str(size)], results["non_confirmable_rps"][str(size)] = await _size(
                            size, plan, raw, stacks, coap
                        )
                raw.close()
    return results


async def _sequential_rate(requester: AsyncRequester, payload: bytes, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await requester.round_trip(payload)
    return n / (time.perf_counter() - t0)


def in_flight(name: str, size: int) -> int:
    """Requests in flight for a stack's req/s (long Hearth messages each carry a Request-Tag, so they
    are assembled apart at the peer)."""
    return WINDOW


async def _size(
    size: int,
    plan: Plan,
    raw: RawRequester,
    stacks: dict[str, Any],
    coap: dict[str, CoapRequester],
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    payload = os.urandom(size)
    samples: dict[str, list[float]] = {name: [] for name in STACKS}
    runs = plan.runs_for(size)
    rounds = -(-runs // BLOCK)
    for i in range(rounds + 1):  # round 0: warm-up (WARMUP trips each)
        # Each stack in turn makes BLOCK round trips, in an order that rotates every round (as in
        # benchmarks.mesh: drift, and what one stack leaves behind, hit all of them alike).
        for name in STACKS[i % len(STACKS) :] + STACKS[: i % len(STACKS)]:
            for _ in range(min(BLOCK, runs - (i - 1) * BLOCK) if i else WARMUP):
                if name == "raw":
                    seconds = await asyncio.to_thread(raw.round_trip, payload)
                else:
                    seconds = await stacks[name].round_trip(payload)
                if i > 0:
                    samples[name].append(seconds * 1000)
    rates = {"raw": await asyncio.to_thread(raw.rate, payload, plan.mqtt_rate)}
    for name in STACKS[1:]:
        n = plan.rate_for(name, size)
        if in_flight(name, size) == 1:
            rates[name] = await _sequential_rate(stacks[name], payload, n)
        else:
            rates[name] = await stacks[name].rate(payload, n)
    non = {
        name: await requester.rate(payload, plan.coap_rate[size], non=True)
        for name, requester in coap.items()
    }
    return {
        name: {**_summary(samples[name], rates[name]), "in_flight": in_flight(name, size)} for name in STACKS
    }, non


def ratios_of(per_size: dict[str, Any], wire: dict[str, Any]) -> dict[str, float]:
    """Every ratio per size, > 1 meaning Hearth (or the shipped design) is ahead."""
    ratios: dict[str, float] = {}
    for size, v in per_size.items():
        p50 = {name: v[name]["p50_ms"] for name in STACKS}
        rps = {name: v[name]["requests_per_s"] for name in STACKS}
        ratios[f"oscore_p50_vs_plain_{size}B"] = OSCORE_ALLOWANCE * p50["coap_plain"] / p50["coap_oscore"]
        ratios[f"aiocoap_oscore_p50_vs_plain_{size}B"] = (
            OSCORE_ALLOWANCE * p50["coap_plain"] / p50["aiocoap_oscore"]
        )
        ratios[f"coap_p50_vs_raw_{size}B"] = p50["raw"] / p50["hearth_coap"]
        ratios[f"coap_rps_vs_raw_{size}B"] = rps["hearth_coap"] / rps["raw"]
        ratios[f"oscore_only_vs_envelope_p50_{size}B"] = p50["hearth_coap_envelope"] / p50["hearth_coap"]
        ratios[f"coap_p50_vs_mqtt_{size}B"] = p50["hearth_mqtt"] / p50["hearth_coap"]
        ratios[f"coap_bytes_vs_mqtt_{size}B"] = (
            wire[size]["hearth_mqtt"]["wire_bytes"] / wire[size]["hearth_coap"]["wire_bytes"]
        )
    return ratios


def _goal_of(name: str) -> float | None:
    return GOALS.get(name.rsplit("_", 1)[0])


def oscore_overhead(wire: dict[str, Any]) -> dict[str, int] | None:
    """OSCORE's bytes per message over plain CoAP (the smallest size: one datagram each way)."""
    size = min(wire, key=int)
    plain, oscore = wire[size]["coap_plain"], wire[size]["aiocoap_oscore"]  # the same tokens: aiocoap's
    if plain["datagrams"] != 2 or oscore["datagrams"] != 2:
        return None
    return {"request": oscore["sent"] - plain["sent"], "response": oscore["received"] - plain["received"]}


def run_mesh_coap_bench(
    *, qos: int = 1, out_dir: Path, plan: Plan | None = None
) -> tuple[dict[str, Any], str]:
    plan = plan or Plan()
    started = time.monotonic()
    raw = aio.run(_run(qos, plan))
    per_size, wire = raw["sizes"], raw["bytes_per_request"]
    for size, stacks in wire.items():
        for counted in stacks.values():
            counted["overhead_bytes"] = counted["wire_bytes"] - 2 * int(size)
    ratios = ratios_of(per_size, wire)
    goals = {
        name: {"goal": goal, "measured": value, "met": value >= goal}
        for name, value in ratios.items()
        if (goal := _goal_of(name)) is not None
    }
    result: dict[str, Any] = {
        "benchmark": "mesh_coap",
        "sizes": per_size,
        "non_confirmable_rps": raw["non_confirmable_rps"],
        "bytes_per_request": wire,
        "oscore_overhead_bytes": oscore_overhead(wire),
        "ratios": ratios,
        "goals": goals,
        "setup": {
            "runs": {str(size): plan.runs_for(size) for size in plan.sizes},
            "qos": qos,
            "block": BLOCK,
            "in_flight": WINDOW,
            "rate_requests": {
                "mqtt": plan.mqtt_rate,
                "coap": {str(size): plan.coap_rate[size] for size in plan.sizes},
            },
            "bytes_trips": plan.bytes_trips,
            "formulas": {
                "oscore_p50_vs_plain": f"{OSCORE_ALLOWANCE} * coap_plain p50 / coap_oscore p50",
                "aiocoap_oscore_p50_vs_plain": f"{OSCORE_ALLOWANCE} * coap_plain p50 / aiocoap_oscore p50",
                "coap_p50_vs_raw": "raw p50 / hearth_coap p50",
                "coap_rps_vs_raw": "hearth_coap req/s / raw req/s",
                "oscore_only_vs_envelope_p50": "hearth_coap_envelope p50 / hearth_coap p50",
                "coap_p50_vs_mqtt": "hearth_mqtt p50 / hearth_coap p50",
                "coap_bytes_vs_mqtt": "hearth_mqtt wire bytes / hearth_coap wire bytes",
            },
            "wall_s": round(time.monotonic() - started, 1),
            **machine(),
        },
    }
    md = markdown(result)
    write_report(out_dir, "mesh_coap", result, md)
    plot(out_dir / "mesh_coap.png", per_size, qos)
    return result, md


def markdown(result: dict[str, Any]) -> str:
    setup, per_size, wire = result["setup"], result["sizes"], result["bytes_per_request"]
    non = result["non_confirmable_rps"]
    rows = []
    for size, v in per_size.items():
        for name in STACKS:
            s, w = v[name], wire[size][name]
            datagrams = w.get("datagrams")
            packets = f" ({datagrams} datagrams)" if datagrams is not None else " (TCP, both hops)"
            nonc = f"{non[size][name]:,.0f}" if name in non[size] else ""
            rows.append(
                f"| {size} B | {name} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['requests_per_s']:,.0f} "
                f"({s['in_flight']}) | {nonc} | {w['wire_bytes']:,}{packets} | {w['overhead_bytes']:,} |"
            )
    formulas, rates = setup["formulas"], setup["rate_requests"]
    runs = ", ".join(f"{n} at {size} B" for size, n in setup["runs"].items())
    coap_rates = "/".join(str(n) for n in rates["coap"].values())
    ratio_rows = []
    for name, value in result["ratios"].items():
        goal = _goal_of(name)
        met = "—" if goal is None else ("yes" if value >= goal else "no")
        ratio_rows.append(f"| {name} | {value:.2f} | {'—' if goal is None else f'≥ {goal:.2f}'} | {met} |")
    overhead = result["oscore_overhead_bytes"]
    overhead_line = (
        f"OSCORE's overhead per message (200 B, one datagram each way; published anchor 11-13 B): "
        f"request {overhead['request']} B, response {overhead['response']} B (Hearth's OSCORE key ids are "
        "4-byte session indexes)."
        if overhead
        else ""
    )
    return "\n".join(
        [
            f"### Mesh round trips over CoAP: OSCORE vs plain aiocoap, Hearth over CoAP (one hop) vs raw paho "
            f"and Hearth through Mosquitto (QoS {setup['qos']}); requester and answerers in separate processes, "
            f"loopback; round trips per stack {runs} by size (turns of {setup['block']}); req/s from "
            f"{rates['mqtt']} requests (MQTT) and {coap_rates} (CoAP, by size), in flight as noted; "
            f"{setup.get('cpu', '?')}",
            "",
            "| payload | stack | p50 (ms) | p99 (ms) | req/s (in flight) | req/s NON | wire bytes / request "
            "| over 2x payload |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Wire bytes: CoAP, UDP payloads of every datagram of the exchange (counted at the requester's "
            "socket); MQTT, TCP payloads of both hops (a counting relay in front of Mosquitto); no IP/UDP/TCP "
            "headers. hearth_coap_envelope carries the links' 8-byte timestamp as well as the envelope's "
            "(16 B a round trip that design would not send). " + overhead_line,
            "",
            "In flight for req/s: aiocoap sends one confirmable message at a time to a peer (NSTART = 1), "
            "the others wait in its backlog; NON: the aiocoap stacks' requests non-confirmable (no backlog). "
            "Hearth's message lane (coap_oscore, hearth_coap) keeps every request in flight and up to 8 "
            "blocks of a long one; a block is as large as the route's MTU allows (loopback: 64 KiB "
            "datagrams).",
            "",
            "| ratio (> 1: Hearth ahead) | measured | goal | met |",
            "|---|---|---|---|",
            *ratio_rows,
            "",
            "Formulas: " + "; ".join(f"`{k}` = {v}" for k, v in formulas.items()) + ".",
        ]
    )


def plot(path: Path, per_size: dict[str, Any], qos: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "raw": "#868e96",
        "hearth_mqtt": "#d9480f",
        "coap_plain": "#40c057",
        "aiocoap_oscore": "#8ce99a",
        "coap_oscore": "#2f9e44",
        "hearth_coap": "#1971c2",
        "hearth_coap_envelope": "#74c0fc",
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.11
    sizes = list(per_size)
    for panel, (metric, unit) in zip(
        axes, (("p50_ms", "p50 round trip, ms (log)"), ("requests_per_s", "req/s (log)")), strict=True
    ):
        for k, name in enumerate(STACKS):
            values = [per_size[s][name][metric] for s in sizes]
            xs = [i + (k - 3) * width for i in range(len(sizes))]
            panel.bar(xs, values, width, label=name, color=colours[name])
        panel.set_yscale("log")
        panel.set_xticks(range(len(sizes)), [f"{s} B" for s in sizes])
        panel.set_title(unit, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Mesh round trips over CoAP vs MQTT (QoS {qos}), loopback, two processes", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
