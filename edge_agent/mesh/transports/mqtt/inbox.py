"""Incoming MQTT messages, handed from paho's callback to the one reader that waits for them.

aiomqtt's message iterator makes a task and an ``asyncio.wait`` per message, which put three event-loop
turns between a frame's arrival and the code that opens it; on the broker path's round trip that was
most of what Hearth added to raw paho. Here paho's callback appends the frame and wakes the reader's
future: the reader runs on the next turn.

A QoS 1 frame is acknowledged once the reader has taken it, after what its handling scheduled (a
reply goes out before the PUBACK, as paho does on its own thread): the PUBACK's write is off the
round trip's path. When the reader falls behind (`ACK_AT_ONCE_BEHIND` frames waiting), frames are
acknowledged on arrival as paho would: the broker's in-flight window never waits on a busy reader,
and a burst queues here (up to ``max_queued``), not in the broker's small per-client queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.errors import TransportError

log = logging.getLogger(__name__)

__all__ = ["ACK_AT_ONCE_BEHIND", "Frame", "Inbox"]

ACK_AT_ONCE_BEHIND = 8
"""Frames waiting for the reader from which new ones are acknowledged on arrival."""


@dataclass(frozen=True, slots=True)
class Frame:
    topic: str
    payload: bytes
    retained: bool = False


class Inbox:
    def __init__(self, max_queued: int, ack: Callable[[int, int], object]) -> None:
        self.max_queued = max_queued
        self._ack = ack
        """paho's ``ack(mid, qos)`` (the client runs with manual acknowledgements)."""
        self._frames: deque[tuple[Frame, int, int]] = deque()
        self._owed: list[tuple[int, int]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed: TransportError | None = None
        self.discarded = 0
        """Frames dropped because the reader was this far behind (the broker's own queue bounds the rest)."""

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's on_message (on the event loop's thread: aiomqtt drives paho from the loop)."""
        if len(self._frames) >= self.max_queued:
            self.discarded += 1
            self._ack(message.mid, message.qos)
            log.warning(
                "%d MQTT frames wait to be read: dropped one (%d so far)", len(self._frames), self.discarded
            )
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self._ack(message.mid, message.qos)
            log.debug("dropped an MQTT frame whose topic is not UTF-8")
            return
        frame = Frame(topic, bytes(message.payload), bool(message.retain))
        qos = message.qos
        if qos and len(self._frames) >= ACK_AT_ONCE_BEHIND:
            self._ack(message.mid, qos)
            qos = 0  # owed nothing when taken
        self._frames.append((frame, message.mid, qos))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, error: TransportError) -> None:
        """The connection ended: the reader gets what is queued, then ``error``."""
        self._closed = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _owe(self, loop: asyncio.AbstractEventLoop, mid: int, qos: int) -> None:
        if not self._owed and not loop.is_closed():
            loop.call_soon(self._acknowledge)  # after what handling the frame scheduled
        self._owed.append((mid, qos))

    def _acknowledge(self) -> None:
        owed, self._owed = self._owed, []
        if self._closed is not None:
            return  # the connection is gone, and with it what the broker waited for
        for mid, qos in owed:
            self._ack(mid, qos)

    async def frames(self) -> AsyncGenerator[Frame, None]:
        if self._waiter is not None:
            raise RuntimeError("this MQTT connection's frames already have a reader")
        loop = asyncio.get_running_loop()
        while True:
            while self._frames:
                frame, mid, qos = self._frames.popleft()
                try:
                    yield frame
                finally:  # taken (or the reader left with it): owed either way
                    if qos:
                        self._owe(loop, mid, qos)
            if self._closed is not None:
                raise self._closed
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
