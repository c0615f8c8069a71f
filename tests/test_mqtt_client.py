"""The MQTT client's own hot path: frames handed from paho's callback to the reader and acknowledged
once taken, publishes waiting for their PUBACK under one timer. paho's real message objects, no broker:
what reaches the broker is covered by the mesh tests through Mosquitto and amqtt."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
import pytest

from edge_agent.errors import TransportError
from edge_agent.mesh.transports.mqtt.acks import PendingAcks
from edge_agent.mesh.transports.mqtt.inbox import ACK_AT_ONCE_BEHIND, Frame, Inbox


def _message(mid: int, topic: bytes, payload: bytes, qos: int = 1) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(mid, topic)
    message.payload, message.qos = payload, qos
    return message


async def test_a_frame_is_acknowledged_after_what_its_handling_scheduled() -> None:
    events: list[str] = []
    inbox = Inbox(max_queued=8, ack=lambda mid, qos: events.append(f"ack {mid}"))
    inbox.on_message(None, None, _message(1, b"hearth/h/req/d", b"one"))  # type: ignore[arg-type]
    inbox.on_message(None, None, _message(2, b"hearth/h/req/d", b"two", qos=0))  # type: ignore[arg-type]
    frames = inbox.frames()
    assert await anext(frames) == Frame("hearth/h/req/d", b"one")
    assert events == []  # not before the reader has it

    async def reply() -> None:
        events.append("reply")

    replying = asyncio.create_task(reply())  # what handling the frame scheduled...
    assert await anext(frames) == Frame("hearth/h/req/d", b"two")
    await replying
    await asyncio.sleep(0)
    assert events == ["reply", "ack 1"]  # ...goes out before the PUBACK; QoS 0 needs none
    inbox.close(TransportError("gone"))
    with pytest.raises(TransportError, match="gone"):
        await anext(frames)


async def test_a_reader_that_falls_behind_does_not_hold_the_brokers_window() -> None:
    acked: list[int] = []
    inbox = Inbox(max_queued=100, ack=lambda mid, qos: acked.append(mid))
    for mid in range(1, ACK_AT_ONCE_BEHIND + 3):
        inbox.on_message(None, None, _message(mid, b"t", b"x"))  # type: ignore[arg-type]
    assert acked == [ACK_AT_ONCE_BEHIND + 1, ACK_AT_ONCE_BEHIND + 2]  # on arrival, as paho would
    frames = inbox.frames()
    for _ in range(ACK_AT_ONCE_BEHIND + 2):
        await anext(frames)
    await asyncio.sleep(0)
    assert sorted(acked) == list(range(1, ACK_AT_ONCE_BEHIND + 3))  # each once
    await frames.aclose()


async def test_a_frame_taken_by_a_reader_that_leaves_is_still_acknowledged() -> None:
    acked: list[int] = []
    inbox = Inbox(max_queued=8, ack=lambda mid, qos: acked.append(mid))
    inbox.on_message(None, None, _message(7, b"t", b"x"))  # type: ignore[arg-type]
    frames = inbox.frames()
    await anext(frames)
    await frames.aclose()
    await asyncio.sleep(0)
    assert acked == [7]  # or the broker would hold its in-flight slot for the connection's life


async def test_frames_past_the_bound_and_unreadable_topics_are_dropped_and_acknowledged() -> None:
    acked: list[int] = []
    inbox = Inbox(max_queued=1, ack=lambda mid, qos: acked.append(mid))
    inbox.on_message(None, None, _message(3, b"\xff\xfe", b"not UTF-8"))  # type: ignore[arg-type]
    inbox.on_message(None, None, _message(1, b"t", b"kept"))  # type: ignore[arg-type]
    inbox.on_message(None, None, _message(2, b"t", b"over the bound"))  # type: ignore[arg-type]
    assert acked == [3, 2] and inbox.discarded == 1
    assert (await anext(inbox.frames())).payload == b"kept"


async def test_a_second_reader_of_the_same_connection_is_refused() -> None:
    inbox = Inbox(max_queued=1, ack=lambda mid, qos: None)

    async def read() -> Frame:
        return await anext(inbox.frames())

    first = asyncio.create_task(read())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already have a reader"):
        await anext(inbox.frames())
    first.cancel()


async def test_publishes_wait_for_their_ack_and_fail_when_it_does_not_come() -> None:
    acks = PendingAcks(timeout_s=0.05)
    answered, ignored = acks.expect(1), acks.expect(2)
    with pytest.raises(TransportError, match="already"):  # one message id waits once
        acks.expect(1)
    acks.acked(1)
    await answered
    with pytest.raises(TransportError, match=r"did not acknowledge a publish in 0\.05 s"):
        await ignored
    assert len(acks) == 0


async def test_a_lost_connection_fails_every_waiting_publish_and_refuses_new_ones() -> None:
    acks = PendingAcks(timeout_s=10)
    waiting = [acks.expect(mid) for mid in range(3)]
    acks.fail_all(TransportError("connection lost"))
    for future in waiting:
        with pytest.raises(TransportError, match="connection lost"):
            await future
    with pytest.raises(TransportError, match="connection lost"):
        acks.expect(9)
