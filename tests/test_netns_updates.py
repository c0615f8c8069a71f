"""Model update chunks between devices on separate hosts (network namespaces on a bridge, Mosquitto on
a host of its own): directly between the two devices when they can reach each other, through the broker
when a firewall between them drops the direct link, the same verified bytes either way."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from benchmarks.rigs import netlab
from benchmarks.rigs.meshkit import provision
from benchmarks.transfer import BROKER_PORT, _node, _publish
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.store import PackStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(netlab.available() is not None, reason=str(netlab.available())),
]

PACK = "bergamot-tiny11-en-pt@int8"


def block_tcp(hosts: dict[str, netlab.Host], src: str, dst: str) -> None:
    """A firewall in the switch: every TCP packet from ``src`` to ``dst`` is dropped (the broker, on its
    own host, stays reachable for both)."""
    netlab.switch_of(hosts).run("nft", "-f", "-", stdin=(
        "table bridge hearth_fw {\n  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    ip saddr {hosts[src].ip} ip daddr {hosts[dst].ip} meta l4proto tcp counter drop\n  }}\n}}\n"
    ))  # fmt: skip


def test_chunks_go_directly_between_hosts_and_through_the_broker_when_a_firewall_blocks_that(
    tmp_path: Path, store: PackStore
) -> None:
    pack = store.get(PACK)
    homes = {name: tmp_path / name for name in ("hub", "fridge")}
    provision(homes["hub"], homes["hub"], "hub", "hub")
    provision(homes["hub"], homes["fridge"], "fridge", "fridge-panel")
    files = [MANIFEST_NAME, *(f.path for f in pack.manifest.files)]
    key_set, envelope = _publish(tmp_path, homes["hub"], pack.path, files, PACK)
    size = sum((pack.path / f).stat().st_size for f in files)
    with netlab.lan(["broker", "hub", "fridge"]) as hosts, contextlib.ExitStack() as stack:
        broker = hosts["broker"]
        stack.enter_context(
            netlab.process_in(broker, *netlab.mosquitto_in(broker, tmp_path / "mq", BROKER_PORT))
        )
        netlab.wait_for_port(hosts["hub"], broker.ip, BROKER_PORT)
        hub = stack.enter_context(_node(hosts["hub"], homes["hub"], broker, "hub"))
        fridge = stack.enter_context(_node(hosts["fridge"], homes["fridge"], broker, "fridge"))
        held = hub.call(op="hold", pack=str(pack.path), envelope=str(envelope), key_set=str(key_set))
        assert fridge.call(op="wait_direct", peers=1)["direct"] == 1

        direct = fridge.call(op="fetch", direct=True)
        assert direct["state"] == "done" and direct["received"] == {"direct": size}
        fridge.call(op="forget", content_id=held["content_id"])

        block_tcp(hosts, "fridge", "hub")
        around = fridge.call(op="fetch", direct=True)  # tries directly, falls back to the broker
        assert around["state"] == "done" and around["received"] == {"broker": size}
        listing = netlab.switch_of(hosts).run("nft", "list", "table", "bridge", "hearth_fw").stdout
        assert "packets 0 " not in listing  # the direct attempt really was dropped by the firewall
        for node in (hub, fridge):
            node.send(op="quit")
