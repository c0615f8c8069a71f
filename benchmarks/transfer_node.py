"""One device of the transfer benchmark, in its own network namespace: the product's mesh endpoint,
update exchange and direct links (no engines: the benchmark measures moving a pack, not running it),
driven by one JSON command per stdin line, one JSON reply per stdout line.

    python -m benchmarks.transfer_node --home HOME --host IP --broker HOST:PORT
    python -m benchmarks.transfer_node --home HOME --host IP --transport coap --seeds IP:PORT,...

With ``--transport coap`` the device runs the CoAP transport alone (`CoapLinks`: no broker, no direct
TLS links): it serves CoAP on ``--host``:``--coap-port``, learns its peers from the seeds, and every
mesh message to a peer (chunk requests, chunks) goes OSCORE-protected, block-wise, over UDP.

Commands: ``peers`` (how many peers, with a direct contact, with a CoAP contact), ``hold`` (seed a
published pack), ``fetch`` (discover and fetch, optionally from named holders only and through the
broker only), ``forget`` (drop a fetched copy, for the next run), ``stats`` (this process's CPU time,
its interface's packet counters, the CoAP messages it took), ``raw_serve`` / ``raw_fetch`` (the same
bytes over a plain TCP socket: the baseline), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.errors import DirectLinkError
from edge_agent.mesh.assembly import MemberKeys, build_member
from edge_agent.mesh.direct import DirectLinks
from edge_agent.mesh.interfaces import Channel, Connector
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import DirectContact, Presence
from edge_agent.mesh.settings import CoapSettings, MeshSettings
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.coap.links import CoapLinks
from edge_agent.mesh.transports.coap.protection import OscoreContext
from edge_agent.mesh.transports.mqtt import MqttConnector
from edge_agent.sync.exchange import UpdateExchange
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.trust import unverified_manifest

RAW_BLOCK = 256 << 10


class CountingLinks(CoapLinks):
    """`CoapLinks` that also counts the OSCORE-protected mesh messages it takes and sends (and their
    bytes: the proof that chunks came over CoAP, not some other path), and the sends that failed."""

    def __init__(self, node: MeshNode, settings: CoapSettings) -> None:
        super().__init__(node, settings)
        self.taken = {"messages": 0, "bytes": 0, "sent": 0, "sent_bytes": 0, "failed": 0}

    async def send_message(
        self,
        device_id: str,
        contact: DirectContact | None,
        channel: Channel,
        payload: bytes,
        *,
        session: str = "",
    ) -> None:
        try:
            await super().send_message(device_id, contact, channel, payload, session=session)
        except DirectLinkError:
            self.taken["failed"] += 1  # timed out, refused (5.03): the message layer tries the next path
            raise
        self.taken["sent"] += 1
        self.taken["sent_bytes"] += len(payload)

    def received(self, context: OscoreContext, channel: Channel, payload: bytes) -> tuple[str, str]:
        sender = super().received(context, channel, payload)
        self.taken["messages"] += 1
        self.taken["bytes"] += len(payload)
        return sender


def _counters() -> dict[str, int]:
    """This namespace's packet and byte counters, summed over its interfaces but loopback."""
    out = dict.fromkeys(("rx_packets", "tx_packets", "rx_bytes", "tx_bytes"), 0)
    for dev in Path("/sys/class/net").iterdir():
        if dev.name != "lo":
            for name in out:
                out[name] += int((dev / "statistics" / name).read_text())
    return out


class TransferNode:
    def __init__(
        self, home: Path, host: str, *, broker: str | None = None, coap: CoapSettings | None = None
    ) -> None:
        keys = MemberKeys.load(HouseholdState(home))
        membership, self.certificate = keys.membership, keys.certificate
        device = self.certificate.device_id
        self.coap: CountingLinks | None = None
        connector: Connector | Callable[[MeshNode], Connector]
        if coap is not None:

            def made(node: MeshNode) -> Connector:
                self.coap = CountingLinks(node, coap)
                return self.coap

            connector = made
        else:
            assert broker is not None
            broker_host, port = broker.rsplit(":", 1)
            connector = MqttConnector(broker_host, int(port), household=membership.household_id,
                                      device=device, client_id=f"{device}-bench")  # fmt: skip
        parts = build_member(
            keys, connector, settings=MeshSettings(presence_interval_s=1.0), presence=self.presence
        )
        self.node, self.endpoint = parts.node, parts.endpoint
        self.store = UpdateStore(home)
        trusted, _ = self.store.load_trust(membership.root_key, membership.household_id)
        self.exchange = UpdateExchange(self.endpoint, self.store, trusted, self.certificate.device_class,
                                       home / "staging")  # fmt: skip
        self.host = host
        # Over CoAP the point is CoAP: no direct TLS links (none announced, none used).
        self.links = DirectLinks(self.node, self.exchange.serve_direct, host=host) if coap is None else None
        self.raw: asyncio.Server | None = None
        self.udp: asyncio.BaseTransport | None = None
        self.lag = 0.0

    def presence(self) -> Presence:
        return Presence(certificate=self.certificate, session=self.node.session, link=self.endpoint.link,
                        profile=self.certificate.profile, interval_s=1.0,
                        direct=self.links.contact if self.links is not None else None)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """CPU seconds, the time, packet counters, CoAP messages taken; the event loop's worst lag since
        the last call (how long a ready callback waited: a stalled loop answers nothing, ACKs included)."""
        lag, self.lag = self.lag, 0.0
        return {"cpu_s": time.process_time(), "time": time.time(), **_counters(), "max_loop_lag_ms": lag * 1000,
                "coap": dict(self.coap.taken) if self.coap is not None else None}  # fmt: skip

    async def watch_lag(self, every: float = 0.02) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(every)
            self.lag = max(self.lag, time.perf_counter() - start - every)

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "peers":
            peers = self.endpoint.peers.all()
            heard = sorted(p.device_id for p in peers if p.presence.coap)
            return {"peers": len(peers), "direct": sum(1 for p in peers if p.presence.direct),
                    "coap": len(heard), "heard": heard}  # fmt: skip
        if op == "stats":
            return self.stats()
        if op == "wait_direct":  # until this many peers announce a direct contact (or 30 s)
            await self.endpoint.wait_until(lambda: sum(1 for p in self.endpoint.peers.all()
                                                       if p.presence.direct) >= cmd["peers"], 30)  # fmt: skip
            return {"direct": sum(1 for p in self.endpoint.peers.all() if p.presence.direct)}
        if op == "hold":
            envelope = Path(cmd["envelope"]).read_bytes()
            self.exchange.trusted.update_key_set(Path(cmd["key_set"]).read_bytes())
            self.store.save_key_set(Path(cmd["key_set"]).read_bytes())
            manifest = unverified_manifest(envelope, "benchmark manifest")
            self.exchange.hold(manifest, envelope, Path(cmd["pack"]))
            return {"content_id": manifest.content_id, "device": self.node.device_id}
        if op == "fetch":
            return await self.fetch(cmd.get("only"), direct=cmd.get("direct", True))
        if op == "forget":
            self.exchange.holdings.pop(cmd["content_id"], None)
            shutil.rmtree(self.exchange.staging_root, ignore_errors=True)
            return {}
        if op == "raw_serve":
            return {"port": await self.raw_serve(Path(cmd["pack"]), cmd["files"], cmd.get("repeat", 1))}
        if op == "raw_fetch":
            return await self.raw_fetch(cmd["host"], cmd["port"], cmd.get("warm_bytes", 0))
        if op == "udp_echo":
            return {"port": await self.udp_echo()}
        if op == "udp_lockstep":
            return await self.udp_lockstep(cmd["host"], cmd["port"], cmd["trips"], cmd["size"])
        raise ValueError(f"unknown op {op}")

    async def fetch(self, only: list[str] | None, *, direct: bool) -> dict[str, Any]:
        self.exchange.direct = self.links if direct else None
        self.exchange.received.clear()
        before = self.stats()
        start = time.time()
        found = await self.exchange.discover(timeout=5.0)
        if len(found) != 1:
            return {"error": f"found {len(found)} updates"}
        manifest, envelope, holders = next(iter(found.values()))
        if only is not None:
            holders = {d: c for d, c in holders.items() if d in only}
        if only is None:
            fetch, _ = await self.exchange.fetch(manifest, envelope, holders)  # the product's defaults
        else:
            fetch, _ = await self.exchange.fetch(manifest, envelope, holders, rediscover_s=1e9)
        return {
            "start": start, "end": time.time(), "state": fetch.state.value, "reason": fetch.reason,
            "bytes": manifest.total_size, "received": dict(self.exchange.received),
            "served_by": {d[:8]: p.served for d, p in fetch.peers.items()},
            "before": before, "after": self.stats(),
        }  # fmt: skip

    async def raw_serve(self, pack: Path, files: list[str], repeat: int = 1) -> int:
        async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(repeat):
                for name in files:
                    with (pack / name).open("rb") as fh:
                        while block := fh.read(RAW_BLOCK):
                            writer.write(block)
                            await writer.drain()
            writer.close()

        self.raw = await asyncio.start_server(send, self.host, 0)
        return int(self.raw.sockets[0].getsockname()[1])

    async def raw_fetch(self, host: str, port: int, warm_bytes: int = 0) -> dict[str, Any]:
        """Everything the raw server sends; ``warm`` is when the first ``warm_bytes`` had come (the rate
        after it is the link's sustained one, past the burst nft's token bucket lets through)."""
        start = time.time()
        warm = start if warm_bytes <= 0 else None
        reader, writer = await asyncio.open_connection(host, port)
        total = 0
        while block := await reader.read(RAW_BLOCK):
            total += len(block)
            if warm is None and total >= warm_bytes:
                warm, warm_total = time.time(), total
        writer.close()
        reply: dict[str, Any] = {"start": start, "end": time.time(), "bytes": total}
        if warm_bytes > 0:
            reply |= {"warm": warm, "warm_bytes": warm_total if warm is not None else total}
        return reply

    async def udp_echo(self) -> int:
        """A plain asyncio UDP echo (the floor under any lockstep of datagrams between two Pythons)."""
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(data[:4], addr)  # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(self.host, 0))
        self.udp = transport
        return int(transport.get_extra_info("sockname")[1])

    async def udp_lockstep(self, host: str, port: int, trips: int, size: int) -> dict[str, Any]:
        """``trips`` datagrams of ``size`` bytes to the echo, each sent when the last one's answer came:
        the round trip a lockstep of blocks pays at the least (no CoAP, no OSCORE)."""
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Asker(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Asker, remote_addr=(host, port))
        payload = bytes(size)
        try:
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(trips):
                transport.sendto(payload)
                async with asyncio.timeout(2):
                    await answers.get()
            wall = time.perf_counter() - start
        finally:
            transport.close()
        return {"trips": trips, "size": size, "seconds": wall, "cpu_s": time.process_time() - cpu}


async def serve(home: Path, host: str, *, broker: str | None, coap: CoapSettings | None) -> None:
    node = TransferNode(home, host, broker=broker, coap=coap)
    async with contextlib.AsyncExitStack() as stack:
        if node.links is not None:
            await stack.enter_async_context(node.links)
        await stack.enter_async_context(node.endpoint)
        await node.endpoint.wait_connected(10)
        await node.endpoint.publish_presence()
        watching = asyncio.ensure_future(node.watch_lag())
        stack.callback(watching.cancel)
        print(json.dumps({"ready": node.node.device_id}), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            try:
                reply = await node.handle(cmd)
            except Exception as exc:  # reported to the driver, which stops the run
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


def _endpoint(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--host", required=True, help="this device's address (direct links, CoAP)")
    parser.add_argument("--transport", choices=("mqtt", "coap"), default="mqtt")
    parser.add_argument("--broker", help="HOST:PORT of the household's Mosquitto (mqtt)")
    parser.add_argument("--coap-port", type=int, default=5683, help="UDP port to serve CoAP on (coap)")
    parser.add_argument("--seeds", default="", help="HOST:PORT,... of the other devices' CoAP (coap)")
    args = parser.parse_args()
    from edge_agent import aio

    coap = None
    if args.transport == "coap":
        seeds = [_endpoint(s) for s in args.seeds.split(",") if s]
        coap = CoapSettings(bind=args.host, port=args.coap_port, advertise=[args.host], seeds=seeds,
                            peer_port=args.coap_port)  # fmt: skip
    elif args.broker is None:
        parser.error("--broker is needed with --transport mqtt")
    if os.environ.get("HEARTH_TRANSFER_LOGS"):  # the driver keeps this device's stderr: Hearth's INFO
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("edge_agent").setLevel(logging.INFO)
    aio.run(serve(args.home, args.host, broker=args.broker, coap=coap))


if __name__ == "__main__":
    main()
