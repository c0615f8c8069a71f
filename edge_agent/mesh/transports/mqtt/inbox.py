"""Incoming MQTT messages, handed from paho's callback to the one reader that waits for them.

aiomqtt's message iterator makes a task and an ``asyncio.wait`` per message, which put three event-loop
turns between a frame's arrival and the code that opens it; on the broker path's round trip that was
most of what Hearth added to raw paho. Here paho's callback appends the frame and wakes the reader's
future: the reader runs on the next turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.errors import TransportError

log = logging.getLogger(__name__)

__all__ = ["Frame", "Inbox"]


@dataclass(frozen=True, slots=True)
class Frame:
    topic: str
    payload: bytes
    retained: bool = False


class Inbox:
    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self._frames: deque[Frame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: TransportError | None = None
        self.discarded = 0
        """Frames dropped because the reader was this far behind (the broker's own queue bounds the rest)."""

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's on_message (on the event loop's thread: aiomqtt drives paho from the loop)."""
        if len(self._frames) >= self.max_queued:
            self.discarded += 1
            log.warning(
                "%d MQTT frames wait to be read: dropped one (%d so far)", len(self._frames), self.discarded
            )
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.debug("dropped an MQTT frame whose topic is not UTF-8")
            return
        self._frames.append(Frame(topic, bytes(message.payload), bool(message.retain)))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, error: TransportError) -> None:
        """The connection ended: the reader gets what is queued, then ``error``."""
        self._closed = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def frames(self) -> AsyncIterator[Frame]:
        if self._waiter is not None:
            raise RuntimeError("this MQTT connection's frames already have a reader")
        loop = asyncio.get_running_loop()
        while True:
            while self._frames:
                yield self._frames.popleft()
            if self._closed is not None:
                raise self._closed
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
