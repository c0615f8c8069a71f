"""The message lane's serving side on its own (no socket): blocks in any order, the last one answered once
every block is in, retransmissions answered from memory, replays and strangers refused before anything is
kept, an abandoned long message giving way; and two real lanes on loopback moving long messages in
standard 1024-byte blocks and in the route's large ones."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiocoap import resource

from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.transports.coap import lane_serving, wire
from edge_agent.mesh.transports.coap.lane import MessageLane
from edge_agent.mesh.transports.coap.lane_serving import LaneServer, Refused
from edge_agent.mesh.transports.coap.protection import OscoreContext, ProtectionError
from edge_agent.mesh.transports.coap.quirks import free_port, server_context, udp_interface

SECRET, SALT = bytes(range(16)), b"saltsalt"
CLIENT_ID, SERVER_ID = b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"
PEER = ("::ffff:127.0.0.1", 40000, 0, 0)
STRANGER = ("::ffff:127.0.0.2", 40000, 0, 0)


def _pair() -> tuple[OscoreContext, OscoreContext]:
    client = OscoreContext(OscoreMaterial(SECRET, SALT, CLIENT_ID, SERVER_ID), peer="server")
    server = OscoreContext(OscoreMaterial(SECRET, SALT, SERVER_ID, CLIENT_ID), peer="client")
    return client, server


class Served:
    """A LaneServer whose answers are captured, and what its handler got."""

    def __init__(self, server_context: OscoreContext) -> None:
        self.context = server_context
        self.bodies: list[bytes] = []
        self.sent: list[tuple[bytes, tuple[object, ...]]] = []
        self.refusals: list[str] = []
        self.mid = 0
        self.answered = asyncio.Event()
        """Set by each answer sent (cleared by whoever waits for the next one)."""
        self.server = LaneServer(
            keys=self._keys,
            handle=self._handle,
            max_body=8 * 1024,
            refused=lambda refusal: self.refusals.append(refusal.diagnostic),
            sendto=self._sendto,
            next_mid=lambda: 0,
        )

    def _sendto(self, data: bytes, address: tuple[object, ...]) -> None:
        self.sent.append((data, address))
        self.answered.set()

    def _keys(self, kid: bytes) -> OscoreContext:
        if kid != self.context.recipient_id:
            raise ProtectionError(wire.Code.UNAUTHORIZED, "Security context not found")
        return self.context

    def _handle(self, context: OscoreContext, path: tuple[bytes, ...], body: bytes) -> bytes:
        self.bodies.append(body)
        return b"got %d" % len(body)

    def offer(self, data: bytes, address: tuple[object, ...] = PEER) -> None:
        message = wire.decode(data)
        option = wire.first(message.options, wire.OSCORE)
        assert option is not None
        self.server.serve(message, option, data, address)


def _request(
    client: OscoreContext, payload: bytes, options: list[tuple[int, bytes]] = ()
) -> tuple[bytes, object]:  # type: ignore[assignment]
    """A protected request as it crosses the wire, and what its answer is bound to."""
    client_options = [(wire.URI_PATH, b"m"), *options]
    option, ciphertext, request = client.protect_request(
        wire.plaintext(wire.Code.POST, client_options, payload)
    )
    client_mid = client.sequence  # one message id per request
    data = wire.encode(wire.Datagram(wire.CON, wire.Code.POST, client_mid, b"tok%05d" % client_mid,
                                     [(wire.OSCORE, option)], ciphertext))  # fmt: skip
    return data, request


def _opened(client: OscoreContext, request: object, answer: bytes) -> tuple[int, bytes]:
    message = wire.decode(answer)
    option = wire.first(message.options, wire.OSCORE)
    if option is None:
        return message.code, message.payload
    code, _, payload = wire.split_plaintext(client.unprotect_response(request, option, message.payload))  # type: ignore[arg-type]
    return code, payload


def _blocks(client: OscoreContext, body: bytes, tag: bytes = b"t") -> list[tuple[bytes, object]]:
    parts = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    return [
        _request(
            client, part, [(wire.BLOCK1, wire.block_value(n, n < len(parts) - 1, 6)), (wire.REQUEST_TAG, tag)]
        )
        for n, part in enumerate(parts)
    ]


def test_blocks_in_any_order_make_one_message_answered_on_the_last_block() -> None:
    client, server_side = _pair()
    served = Served(server_side)
    body = os.urandom(3 * 1024 + 100)
    blocks = _blocks(client, body)
    order = [3, 1, 0, 2]  # the last block first, the rest shuffled
    for n in order:
        served.offer(blocks[n][0])
    assert served.bodies == [body]
    answers = {
        n: _opened(client, blocks[n][1], data) for n, (data, _) in zip(order[1:], served.sent, strict=False)
    }
    assert all(code == wire.Code.CONTINUE for code, _ in answers.values())  # blocks 1, 0, 2 as they came
    last_code, last_payload = _opened(client, blocks[3][1], served.sent[-1][0])
    assert (last_code, last_payload) == (wire.Code.CHANGED, b"got 3172")  # answered once all were in
    assert len(served.sent) == 4


def test_a_retransmission_gets_the_same_answer_and_a_replay_from_elsewhere_none() -> None:
    client, server_side = _pair()
    served = Served(server_side)
    data, request = _request(client, b"hello")
    served.offer(data)
    served.offer(data)  # the answer was lost: the same datagram again, from the same address
    assert served.bodies == [b"hello"]
    assert served.sent[0][0] == served.sent[1][0]
    assert _opened(client, request, served.sent[0][0]) == (wire.Code.CHANGED, b"got 5")
    window = (server_side._top, server_side._seen)
    served.offer(data, STRANGER)  # captured and sent again from another host
    assert wire.decode(served.sent[-1][0]).code == wire.Code.UNAUTHORIZED
    assert wire.decode(served.sent[-1][0]).payload == b"Replay detected"
    assert served.bodies == [b"hello"] and (server_side._top, server_side._seen) == window
    stranger, _ = _pair()
    stranger.sender_id = b"\x09\x09\x09\x09"  # a key id that is no session here
    forged, _ = _request(stranger, b"hi")
    served.offer(forged, STRANGER)
    assert wire.decode(served.sent[-1][0]).payload == b"Security context not found"
    assert served.bodies == [b"hello"] and served.refusals == [
        "Replay detected",
        "Security context not found",
    ]


def test_an_abandoned_long_message_gives_way_and_a_fresh_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, server_side = _pair()
    served = Served(server_side)
    clock = [1000.0]
    monkeypatch.setattr(lane_serving.time, "monotonic", lambda: clock[0])
    for n in range(lane_serving.MAX_ASSEMBLIES):  # eight long messages, each only begun
        served.offer(_blocks(client, os.urandom(2048), tag=bytes([n]))[0][0])
    refused = _blocks(client, os.urandom(2048), tag=b"late")
    served.offer(refused[0][0])
    assert _opened(client, refused[0][1], served.sent[-1][0]) == (
        wire.Code.UNAVAILABLE,
        b"at most 8 long messages at once",
    )
    clock[0] += 3.0  # their senders gave up (no block for longer than a live message leaves a gap)
    body = os.urandom(2048)
    for data, _ in _blocks(client, body, tag=b"new"):
        served.offer(data)
    assert served.bodies == [body]


def test_a_body_past_the_limit_is_refused_at_the_block_that_crosses_it() -> None:
    client, server_side = _pair()
    served = Served(server_side)
    blocks = _blocks(client, os.urandom(9 * 1024))
    for data, _ in blocks[:8]:
        served.offer(data)
    served.offer(blocks[8][0])
    assert _opened(client, blocks[8][1], served.sent[-1][0]) == (
        wire.Code.TOO_LARGE,
        b"a message is at most 8192 bytes",
    )
    assert served.bodies == []


async def test_two_lanes_on_loopback_move_long_messages_in_small_and_large_blocks() -> None:
    client_keys, server_keys = _pair()
    got: list[bytes] = []

    def handle(context: OscoreContext, path: tuple[bytes, ...], body: bytes) -> bytes:
        if path != (b"m",):
            raise Refused(wire.Code.NOT_FOUND, "no such inbox")
        got.append(body)
        return b"ok"

    lanes, contexts = [], []
    for keys, on_message in ((server_keys, handle), (client_keys, lambda c, p, b: b"")):
        port = free_port("127.0.0.1")
        context = await server_context(resource.Site(), ("127.0.0.1", port), [])
        lane = MessageLane(keys=lambda kid, keys=keys: keys, handle=on_message, max_body=1 << 20)
        lane.attach(udp_interface(context))
        lanes.append((lane, port))
        contexts.append(context)
    try:
        (_, server_port), (client, _) = lanes
        address = ("::ffff:127.0.0.1", server_port, 0, 0)
        body = os.urandom(200_000)
        for budget, datagrams in ((1100, 196), (client.budget("127.0.0.1"), 4)):
            before = client.traffic.sent
            answer = await client.post(address, client_keys, (b"m",), body, budget=budget, timeout=10.0)
            assert answer == b"ok" and got[-1] == body
            assert client.traffic.sent - before == datagrams  # 1024-byte blocks, or the route's (SZX 7)
        assert client.budget("127.0.0.1") > 60_000  # loopback's MTU is 64 KiB
    finally:
        for (lane, _), context in zip(lanes, contexts, strict=True):
            lane.detach()
            await context.shutdown()


async def test_a_request_under_a_key_id_not_known_yet_is_judged_after_the_handshakes_are_read() -> None:
    """The handshake's last message (a frame in the transport's inbox) and the first request under its
    keys (on the lane) travel apart: the request waits for the inbox to be read, then opens."""
    client, server_side = _pair()
    served = Served(server_side)
    inbox_read = asyncio.Event()
    known: dict[bytes, OscoreContext] = {}

    def keys(kid: bytes) -> OscoreContext:
        if kid not in known:
            raise ProtectionError(wire.Code.UNAUTHORIZED, "Security context not found")
        return known[kid]

    async def settle() -> bool:
        await inbox_read.wait()
        known[server_side.recipient_id] = server_side  # the reader finished the handshake
        return True

    served.server.keys, served.server.settle = keys, settle
    data, request = _request(client, b"first")
    served.offer(data)
    served.offer(data)  # its retransmission while it waits: nothing twice
    assert served.sent == [] and served.bodies == []
    inbox_read.set()
    await asyncio.wait_for(served.answered.wait(), 5.0)
    served.answered.clear()
    assert served.bodies == [b"first"]
    assert [_opened(client, request, d) for d, _ in served.sent] == [(wire.Code.CHANGED, b"got 5")]
    stranger, _ = _pair()
    stranger.sender_id = b"\x09\x09\x09\x09"  # a key id no handshake makes: refused after the wait
    forged, _ = _request(stranger, b"hi")
    served.offer(forged, STRANGER)
    await asyncio.wait_for(served.answered.wait(), 5.0)
    assert wire.decode(served.sent[-1][0]).payload == b"Security context not found"
    assert served.bodies == [b"first"]


def test_a_failing_handler_is_answered_and_the_lane_serves_on(caplog: pytest.LogCaptureFixture) -> None:
    client, server_side = _pair()
    served = Served(server_side)
    handle = served.server.handle

    def failing(context: OscoreContext, path: tuple[bytes, ...], body: bytes) -> bytes:
        if body == b"bug":
            raise RuntimeError("a bug in the handler")
        return handle(context, path, body)  # type: ignore[return-value]

    served.server.handle = failing
    data, request = _request(client, b"bug")
    served.offer(data)
    assert _opened(client, request, served.sent[-1][0]) == (wire.Code.INTERNAL, b"internal error")
    assert "the handler of a CoAP message failed" in caplog.text
    data, request = _request(client, b"fine")
    served.offer(data)
    assert _opened(client, request, served.sent[-1][0]) == (wire.Code.CHANGED, b"got 4")
