"""A plain MQTT client on aiomqtt (paho-mqtt underneath): publish, subscribe, frames.

MQTT 3.1.1: everything Hearth needs (QoS 1, retained presence, last will) is there, and it is what the
embedded amqtt broker speaks. One client is one connection. The mesh uses it through
`MqttTransport` (transport.py); pairing uses it directly on the pairing topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

from edge_agent.errors import TransportError
from edge_agent.mesh.transports.mqtt.acks import PendingAcks
from edge_agent.mesh.transports.mqtt.inbox import Frame, Inbox

log = logging.getLogger(__name__)


class MqttClient:
    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        will: tuple[str, bytes] | None = None,
        max_queued: int = 10_000,
        qos: int = 1,
        keepalive: int = 10,
    ) -> None:
        self.host, self.port, self.qos = host, port, qos
        self._options = dict(
            hostname=host,
            port=port,
            identifier=client_id,
            username=username,
            password=password,
            tls_context=tls,
            will=aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None,
            protocol=aiomqtt.ProtocolVersion.V311,
            max_queued_incoming_messages=max_queued,
            # paho's window (20 by default) queues further publishes and, on every PUBACK, scans all
            # of them for the next to send; the mesh bounds what it has in flight itself (exchanges,
            # stream windows, `PendingAcks`), so every publish goes to the socket at once.
            max_inflight_messages=0,
            keepalive=keepalive,
            timeout=10,
            # Small request/ack packets must not wait for Nagle + delayed ACK (~40 ms each way).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self.max_queued = max_queued
        self._client: aiomqtt.Client | None = None
        self._acks = PendingAcks(timeout_s=10)
        self._inbox = Inbox(max_queued, ack=lambda mid, qos: None)

    async def __aenter__(self) -> MqttClient:
        client = aiomqtt.Client(**self._options)  # type: ignore[arg-type]
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from exc
        _write_without_deferral(client)
        self._acks = acks = PendingAcks(timeout_s=10)
        _acks_by_callback(client, acks)
        paho = client._client
        paho.manual_ack_set(True)  # the inbox acknowledges a frame once its reader has taken it
        self._inbox = inbox = Inbox(self.max_queued, ack=paho.ack)
        paho.on_message = inbox.on_message
        where = f"{self.host}:{self.port}"

        def disconnected(future: asyncio.Future[None]) -> None:
            # The reader task sees a lost connection as TransportError; retrieving the exception here
            # only stops asyncio from also printing "Future exception was never retrieved".
            if future.cancelled() or (cause := future.exception()) is None:
                error = TransportError(f"connection to the MQTT broker at {where} closed")
            else:
                error = TransportError(f"connection to {where} lost: {cause}")
            acks.fail_all(error)
            inbox.close(error)

        client._disconnected.add_done_callback(disconnected)
        self._client = client
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(exc_type, exc, tb)
            except aiomqtt.MqttError as err:
                log.debug("disconnect: %s", err)

    def _live(self) -> aiomqtt.Client:
        if self._client is None:
            raise TransportError(f"not connected to the MQTT broker at {self.host}:{self.port}")
        return self._client

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Returns once the broker has the message (its PUBACK, at QoS 1); TransportError if the
        connection is gone or the broker does not acknowledge it in time."""
        info = self._live()._client.publish(topic, payload, self.qos, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if self.qos and not info.is_published():
            await self._acks.expect(info.mid)

    async def subscribe(self, pattern: str) -> None:
        try:
            await self._live().subscribe(pattern, qos=self.qos)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe to {pattern} failed: {exc}") from exc

    async def frames(self) -> AsyncIterator[Frame]:
        """Incoming frames, then TransportError once the connection has ended."""
        self._live()
        async for frame in self._inbox.frames():
            yield frame

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash would (the broker fires the will)."""
        client = self._client
        if client is not None:
            sock = client._client.socket()
            if isinstance(sock, socket.socket):
                sock.shutdown(socket.SHUT_RDWR)


def _acks_by_callback(client: aiomqtt.Client, acks: PendingAcks) -> None:
    """Resolve our publishes' futures from paho's PUBACK callback (and still aiomqtt's own, which
    its other calls may use)."""
    paho = client._client
    inner = paho.on_publish

    def on_publish(c: mqtt.Client, userdata: Any, mid: int, *rest: Any) -> None:
        acks.acked(mid)
        if inner is not None:
            inner(c, userdata, mid, *rest)

    paho.on_publish = on_publish


def _write_without_deferral(client: aiomqtt.Client) -> None:
    """Send each packet when it is queued, instead of one loop iteration later.

    aiomqtt registers a writer through ``call_soon_threadsafe`` for every packet (it must, since
    paho may queue from the executor thread that connects), which costs a self-pipe wake-up, an epoll
    registration and an extra loop iteration per publish, and paho pokes a socketpair that nobody
    reads when an event loop drives it. On the loop thread we write at once, exactly as paho does with
    no external loop (and under the same guard: never from inside one of its callbacks); whatever
    the socket does not take waits for writability as before, so no writer is left registered with
    nothing to write.
    """
    paho = client._client
    loop_thread = threading.get_ident()  # called on the event loop's thread
    deferred = paho.on_socket_register_write
    if deferred is None:  # not driven by aiomqtt's loop callbacks: nothing to change
        return

    def register_write(c: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != loop_thread or not c._in_callback_mutex.acquire(False):
            deferred(c, userdata, sock)
            return
        c._in_callback_mutex.release()
        with contextlib.suppress(OSError):  # a broken socket surfaces on the next read, as before
            c.loop_write()
        if c._registered_write:  # the socket was full: the rest goes when it is writable
            c._registered_write = False
            deferred(c, userdata, sock)
            c._registered_write = True

    paho.on_socket_register_write = register_write
    for name in ("_sockpairW", "_sockpairR"):  # paho's wake-up pair for its own select() loop
        pair = getattr(paho, name, None)
        if pair is not None:
            pair.close()
            setattr(paho, name, None)
