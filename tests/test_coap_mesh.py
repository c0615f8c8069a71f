"""The CoAP transport on loopback: real aiocoap endpoints, real sessions and OSCORE, no broker at all.

Each device serves CoAP on its own 127.0.0.1 port and knows the others' as seeds (loopback has no
multicast; discovery by multicast and zeroconf is tested across network namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.mesh.interfaces import Channel, Connector
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import Chunk, Pong, encode
from edge_agent.mesh.settings import CoapSettings, MeshSettings
from edge_agent.mesh.transports.coap.links import CoapLinks
from edge_agent.mesh.transports.multi import MultiConnector
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
        assert fridge.node.sessions is not None
        (session,) = fridge.node.sessions.sessions_with(hub.id)
        assert session.coap is not None
        ping_peer = fridge.endpoint.peers.get(hub.id)
        assert ping_peer is not None and await fridge.endpoint.ping(ping_peer) is not None
        # Nothing was refused on either side.
        assert hub.node.dropped == fridge.node.dropped == {}


async def test_a_mixed_household_the_hub_bridges_coap_only_and_mqtt_only_members(tmp_path: Path) -> None:
    """The fridge speaks CoAP only, the car MQTT only (the in-memory broker here), the hub both: each
    is served by the hub, on its own transport, and neither needs the other's."""
    lab = CoapLab(("hub", "fridge"))
    home: SimHousehold

    def connect(household_id: str, device_id: str, name: str) -> Connector:
        if name == "car":
            return home.sim.connector(device_id)
        coap = lab.connect(household_id, device_id, name)
        if name == "fridge":
            return coap

        def both(node: MeshNode) -> Connector:
            links = coap(node)  # type: ignore[operator]
            return MultiConnector(
                [("mqtt", home.sim.connector(device_id)), ("coap", links)],
                lambda d: (1, 0) if d in links.book else (0, 1),
            )

        return both  # type: ignore[return-value]

    async with household(tmp_path, connect) as home:
        hub = home.device("hub", serves=["generate"], settings=_settings())
        fridge, car = home.device("fridge", settings=_settings()), home.device("car", settings=_settings())
        for dev in (hub, fridge, car):
            dev.interval_s = 1.0
        await home.start(hub, fridge)
        await home._stack.enter_async_context(car.endpoint)
        await car.endpoint.wait_connected(2)
        assert await car.endpoint.wait_until(lambda: car.endpoint.peers.get(hub.id) is not None, 2)
        assert await hub.endpoint.wait_until(lambda: hub.endpoint.peers.get(car.id) is not None, 2)

        fridge_chunks = [c.text async for c in _stream(fridge, hub, ["cold", "milk"])]
        car_chunks = [c.text async for c in _stream(car, hub, ["fuel", "low"])]
        assert (fridge_chunks, car_chunks) == (["cold", "milk", ""], ["fuel", "low", ""])
        assert fridge.endpoint.path_to(hub.id) == "coap"
        assert car.endpoint.path_to(hub.id) == "broker"  # the car has no CoAP: the broker
        assert hub.endpoint.path_to(fridge.id) == "coap" and hub.endpoint.path_to(car.id) == "broker"
        # The fridge and the car never hear of each other: no transport in common.
        assert fridge.endpoint.peers.get(car.id) is None and car.endpoint.peers.get(fridge.id) is None

        # The hub's broker connection drops: its CoAP side carries on, and MQTT comes back by itself.
        link = home.sim.links[hub.id]
        home.sim.sever(hub.id)
        assert [c.text async for c in _stream(fridge, hub, ["still", "here"])] == ["still", "here", ""]
        assert await until(lambda: home.sim.links.get(hub.id) not in (None, link))
        assert hub.endpoint.link_up  # one transport of two never took the whole link down
        assert [c.text async for c in _stream(car, hub, ["back"])] == ["back", ""]


def test_a_datagram_to_a_closed_port_does_not_stop_the_reader_under_uvloop() -> None:
    """The agent runs on uvloop: an ICMP "port unreachable" must not end the socket's reading (with
    aiocoap's error queue on, libuv stops polling the socket after the first one)."""
    import aiocoap
    import uvloop
    from aiocoap import GET, Message

    from edge_agent.errors import TransportError
    from edge_agent.mesh.interfaces import Address
    from edge_agent.mesh.protocol import CoapContact
    from edge_agent.mesh.transports.coap.asking import ask
    from edge_agent.mesh.transports.coap.book import AddressBook
    from edge_agent.mesh.transports.coap.transport import CoapTransport

    async def scenario() -> str:
        settings = CoapSettings(bind="127.0.0.1", port=_free_udp_port(), request_timeout_s=0.5)
        book = AddressBook()
        book.learn("d" * 32, CoapContact(hosts=["127.0.0.1"], port=_free_udp_port()))  # nobody there
        async with CoapTransport(
            settings, household="h" * 16, device="e" * 32, book=book, max_frame=1 << 16
        ) as t:
            with contextlib.suppress(TransportError):
                await t.send(Address("h" * 16, "d" * 32, Channel.REQUESTS), b"x" * 64)
            client = await aiocoap.Context.create_client_context()
            try:
                request = Message(code=GET, uri=f"coap://127.0.0.1:{settings.port}/hearth/presence")
                return str((await ask(client, request, timeout=2.0)).code)
            finally:
                await client.shutdown()

    assert uvloop.run(scenario()) == "4.04 Not Found"  # answered: still reading


async def test_long_messages_at_once_to_one_peer_each_arrive_whole(tmp_path: Path) -> None:
    """Requests over one block go block-wise; several at once to the same hub are assembled apart (a
    Request-Tag each), not mixed into one, and never more at once than the hub holds."""
    async with coap_household(tmp_path) as (home, lab):
        hub = home.device("hub", serves=["generate"], settings=_settings())
        fridge = home.device("fridge", settings=_settings())
        for dev in (hub, fridge):
            dev.interval_s = 1.0
        await home.start(hub, fridge)
        words = [["a" * 1500, "b" * 900], ["c" * 2500]]

        async def answer(ws: list[str]) -> list[str]:
            return [c.text async for c in _stream(fridge, hub, ws)]

        first, second = await asyncio.gather(*(answer(ws) for ws in words))
        assert (first, second) == ([*words[0], ""], [*words[1], ""])
        # Twelve long messages at once: more than the hub assembles for one session (8), so the fridge
        # paces them and every one arrives (each a pong sent to a request inbox: judged and dropped).
        pongs = [encode(Pong(nonce=n), 2048) for n in range(12)]
        links, before = lab.links["fridge"], hub.node.dropped["WrongChannel"]
        await asyncio.gather(
            *(links.send_message(hub.id, None, Channel.REQUESTS, p, session=hub.node.session) for p in pongs)
        )
        assert hub.node.dropped["WrongChannel"] == before + 12
        assert fridge.endpoint.path_to(hub.id) == "coap"


async def test_a_reply_ready_at_once_rides_in_the_response_to_its_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pong (or a request's acceptance) is ready a few loop turns after its request: it goes back in
    that request's CoAP response, not as an exchange of its own."""
    async with coap_household(tmp_path) as (home, lab):
        hub = home.device("hub", serves=["generate"], settings=_settings())
        fridge = home.device("fridge", settings=_settings())
        for dev in (hub, fridge):
            dev.interval_s = 1.0
        await home.start(hub, fridge)
        peer = fridge.endpoint.peers.get(hub.id)
        assert peer is not None and await fridge.endpoint.ping(peer) is not None  # the session is made
        asked: list[str] = []

        for name in ("hub", "fridge"):
            lane = lab.links[name].lane

            async def counting(*args: Any, _name: str = name, _post: Any = lane.post, **kwargs: Any) -> Any:
                asked.append(_name)
                return await _post(*args, **kwargs)

            monkeypatch.setattr(lane, "post", counting)
        assert await fridge.endpoint.ping(peer) is not None
        assert asked == ["fridge"]  # one exchange: the ping, its pong in the answer
        asked.clear()
        chunks = [c.text async for c in _stream(fridge, hub, ["one", "two"])]
        assert chunks == ["one", "two", ""]
        assert asked.count("fridge") == 1  # the request (its acceptance came back in the answer)
