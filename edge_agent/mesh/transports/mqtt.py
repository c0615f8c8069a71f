"""MQTT transport on aiomqtt (paho-mqtt underneath). The broker only ever sees envelopes.

MQTT 3.1.1: everything Hearth needs (QoS 1, retained presence, last will) is there, and it is what the
embedded amqtt broker speaks. A new aiomqtt client per connection, so the endpoint can reconnect.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator
from types import TracebackType

import aiomqtt

from edge_agent.mesh.interfaces import Frame, Transport, TransportError

log = logging.getLogger(__name__)


class MqttTransport(Transport):
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
            keepalive=keepalive,
            timeout=10,
            # Small request/ack packets must not wait for Nagle + delayed ACK (~40 ms each way).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._client: aiomqtt.Client | None = None

    async def __aenter__(self) -> MqttTransport:
        client = aiomqtt.Client(**self._options)  # type: ignore[arg-type]
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from exc
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
        try:
            await self._live().publish(topic, payload, qos=self.qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {topic} failed: {exc}") from exc

    async def subscribe(self, pattern: str) -> None:
        try:
            await self._live().subscribe(pattern, qos=self.qos)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe to {pattern} failed: {exc}") from exc

    async def frames(self) -> AsyncIterator[Frame]:
        try:
            async for message in self._live().messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                yield Frame(str(message.topic), bytes(payload), bool(message.retain))
        except aiomqtt.MqttError as exc:
            raise TransportError(f"connection to {self.host}:{self.port} lost: {exc}") from exc

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash would (the broker fires the will)."""
        client = self._client
        if client is not None:
            sock = client._client.socket()
            if isinstance(sock, socket.socket):
                sock.shutdown(socket.SHUT_RDWR)
