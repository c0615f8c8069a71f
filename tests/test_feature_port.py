"""A feature written only against the public `FeaturePort` works on the in-memory mesh: it registers
a handler, sends (awaited and in the background), spawns tasks under the endpoint's lifetime (a
failure is counted, a long one stops with the endpoint), watches adverts (and stops watching), and
adds a field to this device's advert that peers then see."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import MemoryHits, MemoryQuery
from tests.support.meshsim import household, until


class Echo:
    """Asks every peer it hears once; answers every ask (through the port, and nothing else)."""

    def __init__(self, port: FeaturePort) -> None:
        self.port = port
        self.asked: set[str] = set()
        self.answered_by: list[str] = []
        self.adverts = 0
        port.register(MemoryQuery, self._answer)
        port.register(MemoryHits, self._hits)
        self.unwatch = port.watch_presence(self._heard)
        port.contribute_presence(lambda: {"translation_memory": True})

    def _heard(self, advert: Opened) -> None:
        self.adverts += 1
        sender = advert.header.sender
        session = self.port.session_of(sender)
        if sender in self.asked or session is None or not self.port.is_member(sender):
            return
        self.asked.add(sender)
        query = MemoryQuery(
            nonce=7, reply_session=self.port.node.session, epoch=0, pair="en-de", keys=["0" * 32]
        )
        self.port.spawn(self.port.send(sender, Channel.REQUESTS, query, session=session))

    def _answer(self, requester: DeviceCertificate, query: MemoryQuery) -> None:
        reply = MemoryHits(nonce=query.nonce)
        self.port.send_soon(requester.device_id, Channel.RESPONSES, reply, session=query.reply_session)

    def _hits(self, sender: DeviceCertificate, msg: MemoryHits) -> None:
        self.answered_by.append(sender.device_id)


async def test_a_feature_on_the_public_port_talks_watches_spawns_and_advertises(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub")
        fridge = home.device("fridge")
        echoes = {dev.name: Echo(dev.endpoint) for dev in (hub, fridge)}
        await home.start(hub, fridge)

        assert await until(lambda: echoes["fridge"].answered_by == [hub.id])
        assert await until(lambda: echoes["hub"].answered_by == [fridge.id])
        # The contributed field reaches peers, though the device's own advert leaves it out.
        assert not fridge.memory
        assert await until(lambda: (p := hub.endpoint.peers.get(fridge.id)) is not None
                           and p.presence.translation_memory)  # fmt: skip

        echoes["fridge"].unwatch()
        heard = echoes["fridge"].adverts
        await asyncio.sleep(0.2)  # several adverts of the hub (every 50 ms)
        assert echoes["fridge"].adverts == heard

        async def fails() -> None:
            raise RuntimeError("feature bug")

        fridge.endpoint.spawn(fails())
        sup = fridge.endpoint.supervisor
        assert await until(lambda: sum(sup.drops("mesh-tasks").values()) == 1)
        forever = fridge.endpoint.spawn(asyncio.sleep(3600), name="feature-forever")
        await fridge.endpoint.close()
        assert forever.cancelled()
        assert not fridge.endpoint.lifetime.tasks
