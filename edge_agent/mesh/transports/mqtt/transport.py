"""The mesh over MQTT: addresses are topics, announcements are retained, the departure notice is the will.

hearth/<household>/presence/<device>   retained: the device's signed advert, or its signed departure
hearth/<household>/req/<device>        requests (and cancels, pings) addressed to <device>
hearth/<household>/resp/<device>       responses and stream chunks addressed to <device>

Topics carry ids only, never content. A retained frame in an inbox is never legitimate (any member may
write any inbox, and the broker would replay it on every reconnect): it is reported as retained, so the
node drops it, and cleared here. An emptied presence topic is only a hint (anyone allowed to write
there can empty it), reported as `Vanished`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import AsyncIterator

from edge_agent.errors import TransportError
from edge_agent.mesh.interfaces import (
    Address,
    Announcement,
    Channel,
    Connector,
    Incoming,
    Received,
    Transport,
    TransportState,
    Vanished,
)
from edge_agent.mesh.transports.mqtt.client import MqttClient

log = logging.getLogger(__name__)

_MAX_TOPICS = 4096
"""Inbox topics kept computed (3 channels of every member, with room to spare)."""
_BARRIER = b"\x00hearth-barrier:"
"""Prefix of the markers `caught_up` sends to its own inbox: never an envelope (those start with "HE"),
so the device's other connection (its agent, while a one-shot CLI client runs) skips them silently."""


class MqttTransport(Transport):
    def __init__(self, client: MqttClient, household: str, device: str) -> None:
        self.client = client
        self.household, self.device = household, device
        self.state = TransportState.UNOPENED
        self._board = str(Address(household, device, Channel.PRESENCE))
        self._inbox = str(Address(household, device, Channel.RESPONSES))
        self._clearing: set[asyncio.Task[None]] = set()
        self._barriers: dict[bytes, asyncio.Future[bool]] = {}
        self._topics: dict[Address, str] = {}
        """Members' inbox topics, each computed once (every send publishes to one)."""

    async def open(self) -> None:
        if self.state is not TransportState.UNOPENED:
            raise TransportError(f"this MQTT transport is {self.state.value}; connect a new one")
        self.state = TransportState.OPEN
        await self.client.__aenter__()
        try:
            for channel in (Channel.REQUESTS, Channel.RESPONSES):
                await self.client.subscribe(str(Address(self.household, self.device, channel)))
            await self.client.subscribe(f"hearth/{self.household}/{Channel.PRESENCE.value}/+")
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self.state is TransportState.CLOSED:
            return
        self.state = TransportState.CLOSED
        for barrier in self._barriers.values():
            if not barrier.done():
                barrier.set_result(False)
        await self.client.__aexit__(None, None, None)

    def abort(self) -> None:
        self.client.abort()

    async def send(self, address: Address, frame: bytes) -> None:
        topic = self._topics.get(address)
        if topic is None:
            if len(self._topics) >= _MAX_TOPICS:
                self._topics.clear()
            topic = self._topics[address] = str(address)
        await self.client.publish(topic, frame)

    async def announce(self, frame: bytes) -> None:
        await self.client.publish(self._board, frame, retain=True)

    async def caught_up(self, timeout: float) -> bool:
        # A marker through the broker to our own inbox. The broker sends a subscriber its messages in
        # the order it queued them, and it queued our subscriptions' retained frames (on SUBSCRIBE)
        # before it got this PUBLISH: once the marker comes out of `incoming`, they all have.
        marker = _BARRIER + secrets.token_bytes(16)
        barrier: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._barriers[marker] = barrier
        try:
            async with asyncio.timeout(timeout):
                await self.client.publish(self._inbox, marker)
                return await barrier
        except (TimeoutError, TransportError):
            return False
        finally:
            del self._barriers[marker]

    async def incoming(self) -> AsyncIterator[Incoming]:
        inboxes = {str(a): a for a in (Address(self.household, self.device, c)
                                       for c in (Channel.REQUESTS, Channel.RESPONSES))}  # fmt: skip
        async for frame in self.client.frames():
            address = inboxes.get(frame.topic) or Address.parse(frame.topic)  # the hot path is a lookup
            if address is None or address.household != self.household:
                log.debug("ignored a frame on %s", frame.topic)
                continue
            if address.channel is Channel.PRESENCE:
                if frame.payload:
                    yield Announcement(address.device, frame.payload, frame.retained)
                else:
                    yield Vanished(address.device)
                continue
            if address.device != self.device:
                continue  # not subscribed; a broker bug or a wildcard subscription elsewhere
            if frame.payload.startswith(_BARRIER) and not frame.retained:
                if (barrier := self._barriers.get(frame.payload)) is not None and not barrier.done():
                    barrier.set_result(True)
                continue
            if frame.retained and frame.payload:
                self._clear(frame.topic)
            if frame.payload:
                yield Received(address, frame.payload, frame.retained)

    def _clear(self, topic: str) -> None:
        """Delete a retained frame from our inbox on the broker (members may write any inbox)."""

        async def clear() -> None:
            try:
                await self.client.publish(topic, b"", retain=True)
            except TransportError as exc:
                log.debug("could not clear the retained frame on %s: %s", topic, exc)

        task = asyncio.create_task(clear())
        self._clearing.add(task)
        task.add_done_callback(self._clearing.discard)


class MqttConnector(Connector):
    """Connection settings for one device; `connect` makes a fresh client per (re)connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        household: str,
        device: str,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        qos: int = 1,
        keepalive: int = 10,
    ) -> None:
        self.host, self.port = host, port
        self.household, self.device = household, device
        self.client_id = client_id
        self._auth = (username, password)
        self.tls, self.qos, self.keepalive = tls, qos, keepalive

    def connect(self, departure_notice: bytes | None) -> MqttTransport:
        board = str(Address(self.household, self.device, Channel.PRESENCE))
        client = MqttClient(
            self.host,
            self.port,
            client_id=self.client_id,
            username=self._auth[0],
            password=self._auth[1],
            tls=self.tls,
            will=(board, departure_notice) if departure_notice is not None else None,
            qos=self.qos,
            keepalive=self.keepalive,
        )
        return MqttTransport(client, self.household, self.device)
