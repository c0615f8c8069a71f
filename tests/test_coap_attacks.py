"""Attacks on the CoAP path, on loopback with real aiocoap endpoints: someone on the LAN who captures
the fridge's datagrams to the hub (a recording relay in between), replays them, tampers with them,
sends without OSCORE, with keys nobody issued, or is a member the household has revoked.

Each case asserts the exact refusal, that the hub's trusted state did not change (no request served
or even admitted, no session made or dropped), and that the hub keeps serving the members it should.
The same properties on the broker path are `test_mesh_sessions.py`'s and `test_mesh_attacks.py`'s.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
from aiocoap import POST, Message
from aiocoap.message import UndecidedRemote
from aiocoap.transports.oscore import OSCOREAddress

from benchmarks.rigs.aiocoap_oscore import MemoryContext
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import Chunk, CoapContact, Ping, Request, encode
from edge_agent.mesh.sessions.credentials import RunCredential
from edge_agent.mesh.sessions.handshake import Initiator
from edge_agent.mesh.sessions.wire import HandshakeFrame, pack_time
from edge_agent.mesh.transports.coap.asking import ask
from edge_agent.mesh.transports.coap.links import context_of
from edge_agent.mesh.transports.coap.resources import FRAME, MESSAGE
from tests.support.meshsim import Device, SimHousehold, until, words_handler
from tests.support.udp_tap import UdpTap, tapped
from tests.test_coap_mesh import _settings, _stream, coap_household

WORDS = ["bread", "milk", "eggs"]


def _through(home: SimHousehold, dev: Device, hub: Device, port: int) -> None:
    """Make ``dev`` reach ``hub`` at ``port`` (the tap) whatever the hub's presence says."""
    links = home.lab.links[dev.name]  # type: ignore[attr-defined]
    learn = links.book.learn

    def rerouted(device_id: str, contact: CoapContact | None) -> None:
        if device_id == hub.id and contact is not None:
            contact = contact.model_copy(update={"hosts": ["127.0.0.1"], "port": port})
        learn(device_id, contact)

    links.book.learn = rerouted


class Served:
    """Counts the requests the hub's handler started (what an attack must never add to)."""

    def __init__(self) -> None:
        self.started = 0

    def handler(self, req: Request, requester: object) -> AsyncIterator[Chunk]:
        self.started += 1
        return words_handler(req, requester)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def attacked(tmp: Path) -> AsyncIterator[tuple[SimHousehold, Device, Device, Device, UdpTap, Served]]:
    served = Served()
    async with coap_household(tmp) as (home, lab):
        home.lab = lab  # type: ignore[attr-defined]
        hub = home.device("hub", serves=["generate"], handler=served.handler, settings=_settings())
        fridge, car = home.device("fridge", settings=_settings()), home.device("car", settings=_settings())
        for dev in (hub, fridge, car):
            dev.interval_s = 1.0
        async with tapped(("127.0.0.1", lab.ports["hub"])) as tap:
            _through(home, fridge, hub, tap.port)
            await home.start(hub, fridge, car)
            yield home, hub, fridge, car, tap, served


async def _words(dev: Device, hub: Device) -> list[str]:
    return [c.text async for c in _stream(dev, hub, WORDS)]


def _captured_requests(tap: UdpTap) -> list[bytes]:
    """The fridge's OSCORE-protected requests to the hub's message inbox, as they crossed the LAN."""
    found = []
    for seen in tap.seen:
        if seen.upstream and (message := seen.message()).opt.oscore is not None and message.code == POST:
            found.append(seen.data)
    return found


async def _state(hub: Device, served: Served) -> tuple[object, ...]:
    """What an attack must not change, once the hub has finished what it was serving."""
    assert await until(lambda: not hub.endpoint.exchanges.serving)
    sessions = hub.node.sessions
    assert sessions is not None
    return (
        served.started,
        hub.endpoint.served,
        len(hub.endpoint.exchanges.serving),
        sorted(s.index for peer in hub.endpoint.peers.all() for s in sessions.sessions_with(peer.device_id)),
        sessions.pending,
    )


def _with_new_mid(data: bytes, step: int = 1) -> bytes:
    """The same datagram under another message id (CoAP header bytes 2-3), so CoAP's deduplication
    does not answer it from its cache: the OSCORE layer has to judge it."""
    mid = (int.from_bytes(data[2:4], "big") + step) & 0xFFFF
    return data[:2] + mid.to_bytes(2, "big") + data[4:]


async def test_replayed_and_tampered_datagrams_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (_, hub, fridge, car, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        assert fridge.endpoint.path_to(hub.id) == "coap"
        captured = _captured_requests(tap)
        assert captured, "the fridge's requests crossed the tap"
        before = await _state(hub, served)

        for data in captured:  # every protected request again, from another host
            answer = await tap.inject(_with_new_mid(data))
            assert answer is not None
            assert (answer.code, answer.payload) == (aiocoap.UNAUTHORIZED, b"Replay detected")
            assert answer.opt.oscore is None  # refused before anything was decrypted into a response

        # A sequence number the hub has not seen (so no replay), with the ciphertext it did not seal.
        original = Message.decode(captured[0])
        flags, kid = original.opt.oscore[0], original.opt.oscore[1 + (original.opt.oscore[0] & 0x07) :]
        tampered = Message(code=POST, payload=original.payload[:-1] + bytes([original.payload[-1] ^ 1]))
        tampered.opt.oscore = bytes([flags & ~0x07 | 2]) + b"\x7f\x00" + kid
        tampered.mtype, tampered.mid, tampered.token = aiocoap.CON, 11, b"\x0b"
        answer = await tap.inject(tampered.encode())
        assert answer is not None and (answer.code, answer.payload) == (
            aiocoap.BAD_REQUEST,
            b"Decryption failed",
        )

        assert await _state(hub, served) == before
        # ... and the hub serves the fridge (a fresh request) and the car as before.
        assert await _words(fridge, hub) == [*WORDS, ""]
        assert await _words(car, hub) == [*WORDS, ""]


async def test_unprotected_requests_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (_, hub, fridge, car, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        before = await _state(hub, served)

        request = Message(
            code=POST, payload=b"\0" * 8 + b'{"type":"request"}', uri_path=MESSAGE[Channel.REQUESTS]
        )
        request.mtype, request.mid, request.token = aiocoap.CON, 1, b"\x01\x02"
        answer = await tap.inject(request.encode())
        assert answer is not None and (answer.code, answer.payload) == (
            aiocoap.UNAUTHORIZED,
            b"OSCORE required",
        )

        # A protected-looking request under a key id that is no session here.
        (data,) = _captured_requests(tap)[:1]
        captured = Message.decode(data)
        forged = Message(code=POST, payload=captured.payload)
        forged.opt.oscore = captured.opt.oscore[:-4] + secrets.token_bytes(4)  # the kid is the option's tail
        forged.mtype, forged.mid, forged.token = aiocoap.CON, 7, b"\x07"
        answer = await tap.inject(forged.encode())
        assert answer is not None
        assert (answer.code, answer.payload) == (aiocoap.UNAUTHORIZED, b"Security context not found")

        # An unprotected frame too large for one block, and one that tries to go block-wise.
        big = Message(code=POST, payload=b"x" * 1100, uri_path=FRAME[Channel.REQUESTS])
        big.mtype, big.mid, big.token = aiocoap.CON, 2, b"\x03"
        answer = await tap.inject(big.encode())
        assert answer is not None and answer.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
        blockwise = Message(code=POST, payload=b"x" * 64, uri_path=FRAME[Channel.REQUESTS])
        blockwise.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 2)
        blockwise.mtype, blockwise.mid, blockwise.token = aiocoap.CON, 3, b"\x04"
        answer = await tap.inject(blockwise.encode())
        assert answer is not None
        assert (answer.code, answer.payload) == (aiocoap.UNAUTHORIZED, b"no block-wise body without OSCORE")

        assert await _state(hub, served) == before
        assert await _words(car, hub) == [*WORDS, ""]


async def test_a_handshake_under_a_credential_nobody_issued_makes_no_session(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (home, hub, fridge, _, tap, served):
        before = await _state(hub, served)
        dropped = hub.node.dropped["NotAMemberError"]
        stranger = DeviceIdentity.generate()  # never issued a certificate by this household
        credential = RunCredential.make(stranger, home.root.household_id, "5" * 16, aes=True)
        assert hub.node.sessions is not None
        frame = HandshakeFrame(
            1, stranger.device_id, hub.id, "5" * 16, hub.node.session, 7, 0,
            Initiator(credential, hub.id, 7).message_1(),
        ).pack()  # fmt: skip
        request = Message(code=POST, payload=frame, uri_path=FRAME[Channel.REQUESTS])
        request.mtype, request.mid, request.token = aiocoap.CON, 9, b"\x09"
        answer = await tap.inject(request.encode())
        # The transport takes any frame (it cannot judge one); the node refuses it before any state.
        assert answer is not None and answer.code == aiocoap.CHANGED
        assert await until(lambda: hub.node.dropped["NotAMemberError"] == dropped + 1)
        assert await _state(hub, served) == before
        assert await _words(fridge, hub) == [*WORDS, ""]


async def test_a_revoked_member_is_refused_on_coap_and_the_others_are_served(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (home, hub, fridge, car, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        captured = _captured_requests(tap)
        home.revoke(fridge)
        assert hub.node.sessions is not None and hub.node.sessions.sessions_with(fridge.id) == []
        started = served.started
        # What the fridge sent while a member opens nothing now: its sessions are gone.
        answer = await tap.inject(_with_new_mid(captured[0]))
        assert answer is not None
        assert (answer.code, answer.payload) == (aiocoap.UNAUTHORIZED, b"Security context not found")
        assert served.started == started
        assert await _words(car, hub) == [*WORDS, ""]


async def test_replay_is_refused_after_the_hub_restarts(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (home, hub, fridge, car, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        captured = _captured_requests(tap)
        await hub.endpoint.close()
        restarted = home.restart(hub)
        await home.start(restarted)

        def car_knows_the_new_run() -> bool:
            peer = car.endpoint.peers.get(hub.id)
            return peer is not None and peer.session == restarted.node.session

        assert await until(car_knows_the_new_run)
        started = served.started
        for data in captured:
            answer = await tap.inject(_with_new_mid(data))
            assert answer is not None
            assert (answer.code, answer.payload) == (aiocoap.UNAUTHORIZED, b"Security context not found")
        assert served.started == started
        assert await _words(car, restarted) == [*WORDS, ""]


@contextlib.asynccontextmanager
async def _as_fridge(fridge: Device, hub: Device) -> AsyncIterator[tuple[aiocoap.Context, MemoryContext]]:
    """An aiocoap client holding the fridge's own OSCORE keys with the hub (a member's own keys in
    other code, modified), its sequence numbers taken from the fridge's lane and handed back after."""
    assert fridge.node.sessions is not None
    session = fridge.node.sessions.current(hub.id, hub.node.session)
    assert session is not None
    lane_context = context_of(session)
    twin = MemoryContext(session.oscore, session.peer, session.peer_run)
    twin.sender_sequence_number = lane_context.sequence
    client = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    try:
        yield client, twin
    finally:
        lane_context.sequence = twin.sender_sequence_number
        await client.shutdown()


async def _protected(fridge: Device, hub: Device, port: int, payload: bytes) -> Message:
    """``payload`` as the fridge's own OSCORE session with the hub protects it, to its message inbox,
    past every check the fridge's sending side makes."""
    async with _as_fridge(fridge, hub) as (client, twin):
        request = Message(code=POST, payload=payload)
        request.remote = OSCOREAddress(twin, UndecidedRemote("coap", f"127.0.0.1:{port}"))
        request.opt.uri_path = MESSAGE[Channel.REQUESTS]
        return await ask(client, request, timeout=10.0, blockwise=True)


async def test_a_stale_message_under_live_keys_is_refused(tmp_path: Path) -> None:
    """OSCORE's window stops a replay, not a delay: the sender's clock inside the protection does, as
    the envelope's timestamp does on the broker path."""
    async with attacked(tmp_path) as (_home, hub, fridge, _, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        before = await _state(hub, served)
        refused = hub.node.dropped["ReplayError"]
        ping = encode(Ping(nonce=1, reply_session=fridge.node.session))
        stale = pack_time(int(time.time() * 1000) - 600_000) + ping
        answer = await _protected(fridge, hub, tap.port, stale)
        assert (answer.code, answer.payload) == (aiocoap.BAD_REQUEST, b"stale")
        assert hub.node.dropped["ReplayError"] == refused + 1
        assert await _state(hub, served) == before
        assert await _words(fridge, hub) == [*WORDS, ""]


async def test_a_member_cannot_make_the_hub_assemble_more_than_a_frame(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (_home, hub, fridge, _, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        before = await _state(hub, served)
        limit = hub.node.limits.max_frame_bytes + 8
        answer = await _protected(fridge, hub, tap.port, b"x" * (limit + 1))
        assert answer.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
        assert answer.payload == f"a message is at most {limit} bytes".encode()
        assert await _state(hub, served) == before
        assert await _words(fridge, hub) == [*WORDS, ""]


async def test_a_member_cannot_keep_many_long_messages_half_sent(tmp_path: Path) -> None:
    async with attacked(tmp_path) as (_home, hub, fridge, _, tap, served):
        assert await _words(fridge, hub) == [*WORDS, ""]
        before = await _state(hub, served)
        answers = []
        async with _as_fridge(fridge, hub) as (client, twin):
            for n in range(9):  # the first block of nine long messages, none ever finished
                request = Message(code=POST, payload=b"x" * 1024)
                request.remote = OSCOREAddress(twin, UndecidedRemote("coap", f"127.0.0.1:{tap.port}"))
                request.opt.uri_path = MESSAGE[Channel.REQUESTS]
                request.opt.request_tag = (bytes([n]),)
                request.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 6)
                answers.append(await ask(client, request, timeout=2.0))
        assert [a.code for a in answers] == [aiocoap.CONTINUE] * 8 + [aiocoap.SERVICE_UNAVAILABLE]
        assert answers[-1].payload == b"at most 8 long messages at once"
        assert await _state(hub, served) == before
        assert await _words(fridge, hub) == [*WORDS, ""]  # short messages still pass
