"""MQTT transport on aiomqtt (paho-mqtt underneath). The broker only ever sees envelopes."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator
from types import TracebackType

import aiomqtt

from edge_agent.mesh.interfaces import Frame, Transport

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
    ) -> None:
        self.qos = qos
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=client_id,
            username=username,
            password=password,
            tls_context=tls,
            will=aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            max_queued_incoming_messages=max_queued,
            timeout=10,
            # Small request/ack packets must not wait for Nagle + delayed ACK (~40 ms each way).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def __aenter__(self) -> MqttTransport:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=self.qos, retain=retain)

    async def subscribe(self, pattern: str) -> None:
        await self._client.subscribe(pattern, qos=self.qos)

    async def frames(self) -> AsyncIterator[Frame]:
        async for message in self._client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            yield Frame(str(message.topic), bytes(payload), bool(message.retain))
