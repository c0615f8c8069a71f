"""Direct device-to-device links for update chunks (mesh.direct): real TLS 1.3 on loopback between
in-memory-mesh agents. Chunks take the direct path when a holder announces one, fall back to the broker
when it cannot be reached, and every way of abusing a link is refused with trusted state unchanged. The
chunk tests that hold on either path run on both, in test_update_exchange.py (`PATHS`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import uvloop
from pydantic import BaseModel

from edge_agent.errors import DirectLinkError, DirectRefusedError
from edge_agent.mesh.direct import Ask, DirectLinks
from edge_agent.mesh.direct.frames import Answer, Challenge, Hello, Message, Welcome
from edge_agent.mesh.direct.handshake import sign_input
from edge_agent.mesh.direct.tls import client_context
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import DirectContact
from edge_agent.sync.swarm import FetchState
from tests.support.meshsim import household, until
from tests.test_update_exchange import FILES, announced, direct, exchange, publish, pull, same_files


async def test_an_unreachable_holder_is_fetched_from_through_the_broker(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        async with direct(hub, ex_hub) as hub_links, direct(car, ex_car):
            assert hub_links.contact is not None
            await hub_links.close()  # announced, but nobody listens there any more
            await announced(home, hub, car)
            publish(home, ex_hub, tmp_path)
            state, staging, _ = await pull(ex_car)
            assert state is FetchState.DONE and same_files(staging)
            assert ex_car.received == {"broker": sum(len(v) for v in FILES.values())}


async def test_a_holder_presenting_another_certificate_is_not_trusted_and_the_broker_is_used(
    tmp_path: Path,
) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        served: list[int] = []
        serve = ex_hub.serve_direct

        async def counting(requester: str, ask: Ask) -> bytes:
            served.append(ask.index)
            return await serve(requester, ask)

        async with DirectLinks(hub.node, counting, host="127.0.0.1") as impostor, direct(car, ex_car):
            assert impostor.contact is not None
            ex_hub.direct = impostor  # listening, but announcing some other certificate's fingerprint
            hub.direct = impostor.contact.model_copy(update={"tls_sha256": "ab" * 32})
            await announced(home, hub, car)
            publish(home, ex_hub, tmp_path)
            state, staging, _ = await pull(ex_car)
            assert state is FetchState.DONE and same_files(staging)
            assert car.node.dropped["DirectWrongCertificate"] == 1
            assert served == [] and ex_car.received == {"broker": sum(len(v) for v in FILES.values())}


async def test_a_revoked_device_cannot_open_a_link_and_is_served_nothing(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        async with direct(hub, ex_hub) as links, direct(car, ex_car) as car_links:
            assert links.contact is not None
            crl = home.root.revoke(car.id)
            hub.node.membership.apply_revocations(crl)  # the hub knows; the car acts as if it did not
            before = dict(hub.node.dropped)
            with pytest.raises(DirectLinkError, match="closed during the handshake"):
                await car_links.ask(hub.id, links.contact, Ask(id=1, content_id=manifest.content_id,
                                    index=0), max_length=1 << 20)  # fmt: skip
            assert hub.node.dropped["DirectLinkRefused"] == before.get("DirectLinkRefused", 0) + 1
            assert links.server.served == {}


async def test_links_close_when_either_end_is_revoked_and_are_not_made_again(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car, phone = (home.device("hub", device_class="hub"), home.device("car"),
                           home.device("phone"))  # fmt: skip
        await home.start(hub, car, phone)
        ex = {d.name: exchange(home, d, tmp_path) for d in (hub, car, phone)}
        publish(home, ex["hub"], tmp_path)
        manifest = next(iter(ex["hub"].holdings.values())).manifest
        ask = Ask(id=1, content_id=manifest.content_id, index=0)
        size = manifest.chunk_length(0)
        async with direct(hub, ex["hub"]) as links, direct(car, ex["car"]) as car_links, \
                direct(phone, ex["phone"]) as phone_links:  # fmt: skip
            assert links.contact is not None
            assert len(await car_links.ask(hub.id, links.contact, ask, max_length=size)) == size
            assert len(await phone_links.ask(hub.id, links.contact, ask, max_length=size)) == size
            assert len(links.server.served) == 2
            home.revoke(car)  # the client end: the hub closes the car's link at once
            assert await until(lambda: len(links.server.served) == 1)
            with pytest.raises(DirectLinkError, match="closed during the handshake"):
                await car_links.ask(hub.id, links.contact, ask, max_length=size)
            assert len(links.server.served) == 1
            home.revoke(hub)  # the server end: the phone drops its link and asks it nothing more
            assert phone_links.links == {}
            with pytest.raises(DirectLinkError, match="has been revoked"):
                await phone_links.ask(hub.id, links.contact, ask, max_length=size)


async def test_a_chunk_not_held_is_refused_in_words(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        async with direct(hub, ex_hub) as links, direct(car, ex_car) as car_links:
            assert links.contact is not None
            with pytest.raises(DirectRefusedError, match="is not held here"):
                await car_links.ask(hub.id, links.contact, Ask(id=1, content_id="0" * 16, index=0),
                                    max_length=100)  # fmt: skip


async def test_an_answer_longer_than_the_signed_chunk_is_not_read(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_car = exchange(home, car, tmp_path)

        async def endless(requester: str, ask: Ask) -> bytes:
            return b"x" * 5000

        async with DirectLinks(hub.node, endless, host="127.0.0.1") as links, direct(car, ex_car) as mine:
            assert links.contact is not None
            with pytest.raises(DirectLinkError, match="a 5000-byte answer; the signed chunk is 100 bytes"):
                await mine.ask(hub.id, links.contact, Ask(id=1, content_id="0" * 16, index=0), max_length=100)
            assert mine.received == {} and car.node.dropped["DirectLinkRefused"] == 1


async def test_hostile_framing_is_dropped_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        publish(home, ex_hub, tmp_path)
        manifest = next(iter(ex_hub.holdings.values())).manifest
        async with direct(hub, ex_hub) as links, direct(car, ex_car) as car_links:
            contact = links.contact
            assert contact is not None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            # An oversized header, a header that is not JSON, a message before the handshake.
            garbage_frames = (
                struct.pack(">I", 1 << 30),
                struct.pack(">I", 5) + b"{nope",
                Message(Channel.REQUESTS, 4).prefix() + b"ping",
            )
            for garbage in garbage_frames:
                reader, writer = await asyncio.open_connection("127.0.0.1", contact.port, ssl=ctx)
                await reader.readexactly(4)  # the challenge's length...
                writer.write(garbage)
                await writer.drain()
                with contextlib.suppress(Exception):
                    await reader.read()  # ...and the server hangs up
                writer.close()
            assert await until(lambda: hub.node.dropped["DirectLinkRefused"] == 3)
            data = await car_links.ask(hub.id, contact, Ask(id=7, content_id=manifest.content_id, index=1),
                                       max_length=manifest.chunk_length(1))  # fmt: skip
            assert len(data) == manifest.chunk_length(1)


async def test_transfers_yield_to_inference_one_chunk_in_flight(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car")
        await home.start(hub, car)
        ex_hub, ex_car = exchange(home, hub, tmp_path), exchange(home, car, tmp_path)
        busy = [True]
        ex_car.busy = lambda: busy[0]
        in_flight, most = [0], [0]
        serve = ex_hub.serve_direct

        async def watching(requester: str, ask: Ask) -> bytes:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            try:
                await asyncio.sleep(0)
                return await serve(requester, ask)
            finally:
                in_flight[0] -= 1

        async with DirectLinks(hub.node, watching, host="127.0.0.1") as links, direct(car, ex_car):
            ex_hub.direct, hub.direct = links, links.contact
            await announced(home, hub, car)
            publish(home, ex_hub, tmp_path)
            fetched = asyncio.create_task(pull(ex_car))
            assert await until(lambda: ex_car.received["direct"] > 0)
            assert most[0] == 1 and len(ex_car._fetches[next(iter(ex_car._fetches))][0].in_flight()) <= 1
            busy[0] = False  # inference done: the rest goes at full width
            state, staging, _ = await fetched
            assert state is FetchState.DONE and same_files(staging)


def test_a_contact_with_a_bad_fingerprint_or_host_is_refused_on_arrival() -> None:
    from pydantic import ValidationError

    for bad in ({"hosts": [], "port": 1, "tls_sha256": "a" * 64},
                {"hosts": ["x;rm"], "port": 1, "tls_sha256": "a" * 64},
                {"hosts": ["1.2.3.4"], "port": 0, "tls_sha256": "a" * 64},
                {"hosts": ["1.2.3.4"], "port": 1, "tls_sha256": "A" * 64}):  # fmt: skip
        with pytest.raises(ValidationError):
            DirectContact.model_validate(bad)


M = TypeVar("M", bound=BaseModel)


class EarlyClient:
    """A direct-link client whose TLS ClientHello is in the server's socket before the server has even
    accepted the connection (the kernel completes TCP by itself): what a loaded device sees whenever
    its loop gets to a new connection later than the client's first bytes arrive. TLS over memory
    BIOs, so the test decides when each byte is sent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)  # no loop has run since
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.sock.sendall(self.outgoing.read())  # the ClientHello, before the server looked
        self.sock.setblocking(False)

    async def _flush(self) -> None:
        if out := self.outgoing.read():
            await asyncio.get_running_loop().sock_sendall(self.sock, out)

    async def _fill(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.incoming.write(data)

    async def handshake(self) -> str:
        """Completes TLS; the server certificate's SHA-256."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()

    async def read_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                buf += self.tls.read(n - len(buf))
            except ssl.SSLWantReadError:
                await self._fill()
        return buf

    async def read(self, model: type[M]) -> M:
        (length,) = struct.unpack(">I", await self.read_exactly(4))
        return model.model_validate_json(await self.read_exactly(length))

    async def write(self, frame: BaseModel) -> None:
        header = frame.model_dump_json().encode()
        self.tls.write(struct.pack(">I", len(header)) + header)
        await self._flush()


@pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_a_client_hello_that_arrives_before_the_server_accepts_still_makes_the_link(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """Nothing may read an accepted connection before TLS does: a plain-text stream took the early
    ClientHello into its own buffer (on uvloop, the agent's loop), the handshake then waited for bytes
    it already had until HANDSHAKE_S refused the link, and the holder was left to the broker for a
    minute. Here the link is made, the member authenticated, a chunk served, nothing refused."""

    async def scenario() -> None:
        async with household(tmp_path) as home:
            hub, car = home.device("hub", device_class="hub"), home.device("car")
            await home.start(hub, car)
            ex_hub = exchange(home, hub, tmp_path)
            publish(home, ex_hub, tmp_path)
            manifest = next(iter(ex_hub.holdings.values())).manifest
            async with direct(hub, ex_hub) as links:
                assert links.contact is not None
                client = EarlyClient(links.contact.port)
                try:
                    async with asyncio.timeout(30):  # a deadline for the test only
                        assert await client.handshake() == links.contact.tls_sha256
                        challenge = await client.read(Challenge)
                        signed = sign_input(home.root.household_id, car.id, hub.id,
                                             links.contact.tls_sha256, challenge.nonce)  # fmt: skip
                        signature = car.node.identity.signing_key.sign(signed).signature
                        await client.write(
                            Hello(device=car.id, signature=base64.b64encode(signature).decode())
                        )
                        await client.read(Welcome)
                        await client.write(Ask(id=7, content_id=manifest.content_id, index=0))
                        answer = await client.read(Answer)
                        data = await client.read_exactly(answer.length)
                    assert (answer.id, answer.error, len(data)) == (7, None, manifest.chunk_length(0))
                    assert [d for d, _ in links.server.served.values() if d] == [car.id]
                    assert hub.node.dropped["DirectLinkRefused"] == 0
                    assert links.supervisor.report().dropped == 0
                finally:
                    client.sock.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(scenario())
