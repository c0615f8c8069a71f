"""One device of the transfer benchmark, in its own network namespace: the product's mesh endpoint,
update exchange and direct links (no engines: the benchmark measures moving a pack, not running it),
driven by one JSON command per stdin line, one JSON reply per stdout line.

    python -m benchmarks.transfer_node --home HOME --broker HOST:PORT

Commands: ``peers`` (how many peers, and with a direct contact), ``hold`` (seed a published pack),
``fetch`` (discover and fetch, optionally from named holders only and through the broker only),
``forget`` (drop a fetched copy, for the next run), ``raw_serve`` / ``raw_fetch`` (the same bytes over
a plain TCP socket: the baseline), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.mesh.assembly import MemberKeys, build_member
from edge_agent.mesh.direct import DirectLinks
from edge_agent.mesh.protocol import Presence
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import MqttConnector
from edge_agent.sync.exchange import UpdateExchange
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.trust import unverified_manifest

RAW_BLOCK = 256 << 10


class TransferNode:
    def __init__(self, home: Path, broker: str, host: str) -> None:
        keys = MemberKeys.load(HouseholdState(home))
        membership, self.certificate = keys.membership, keys.certificate
        broker_host, port = broker.rsplit(":", 1)
        device = self.certificate.device_id
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
        self.links = DirectLinks(self.node, self.exchange.serve_direct, host=host)
        self.raw: asyncio.Server | None = None

    def presence(self) -> Presence:
        return Presence(certificate=self.certificate, session=self.node.session, link=self.endpoint.link,
                        profile=self.certificate.profile, interval_s=1.0, direct=self.links.contact)  # fmt: skip

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "peers":
            peers = self.endpoint.peers.all()
            return {"peers": len(peers), "direct": sum(1 for p in peers if p.presence.direct)}
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
            return {"port": await self.raw_serve(Path(cmd["pack"]), cmd["files"])}
        if op == "raw_fetch":
            return await self.raw_fetch(cmd["host"], cmd["port"])
        raise ValueError(f"unknown op {op}")

    async def fetch(self, only: list[str] | None, *, direct: bool) -> dict[str, Any]:
        self.exchange.direct = self.links if direct else None
        self.exchange.received.clear()
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
        }  # fmt: skip

    async def raw_serve(self, pack: Path, files: list[str]) -> int:
        async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for name in files:
                with (pack / name).open("rb") as fh:
                    while block := fh.read(RAW_BLOCK):
                        writer.write(block)
                        await writer.drain()
            writer.close()

        self.raw = await asyncio.start_server(send, self.links.host, 0)
        return int(self.raw.sockets[0].getsockname()[1])

    async def raw_fetch(self, host: str, port: int) -> dict[str, Any]:
        start = time.time()
        reader, writer = await asyncio.open_connection(host, port)
        total = 0
        while block := await reader.read(RAW_BLOCK):
            total += len(block)
        writer.close()
        return {"start": start, "end": time.time(), "bytes": total}


async def serve(home: Path, broker: str, host: str) -> None:
    node = TransferNode(home, broker, host)
    async with node.links, node.endpoint:
        await node.endpoint.wait_connected(10)
        await node.endpoint.publish_presence()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the household's Mosquitto")
    parser.add_argument("--host", required=True, help="this device's address (direct links listen there)")
    args = parser.parse_args()
    from edge_agent import aio

    aio.run(serve(args.home, args.broker, args.host))


if __name__ == "__main__":
    main()
