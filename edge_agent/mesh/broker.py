"""Brokers: an embedded amqtt broker for the no-install default, and a Mosquitto config for production.

The broker is never trusted with content (every payload is an envelope), but it is the mesh's choke
point, so production runs Mosquitto with TLS, client certificates or passwords, and per-device ACLs
written as ``acl_file`` patterns (Mosquitto 2.0.11's dynamic-security plugin does not substitute
``%u``/``%c``; eclipse-mosquitto/mosquitto#2222).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.mesh.files import write_atomic

log = logging.getLogger(__name__)

MAX_PAIRING_PACKET = 256 * 1024 + 1024
"""The pairing broker's packet limit: the largest frame a pairing device reads (the hub's sealed
welcome, pairing_link.MAX_DEVICE_FRAME) and its MQTT header."""


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmbeddedBroker:
    """amqtt in this process: loopback-only by default, anonymous (the envelopes carry the security)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        if not _loopback(host):
            raise ValueError(
                f"the embedded broker has no authentication and only binds loopback, not {host!r}; "
                "use Mosquitto (`hearth broker config`) to serve other hosts"
            )
        self.host, self.port = host, port
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        class ClosingBroker(Broker):  # type: ignore[misc]
            """amqtt closes a client's socket only when the client's session ends; a session stuck
            delivering a QoS 1 message to a client that left never ends, and its socket outlived the
            broker. Here every connection's socket is closed when its handler returns or is cancelled."""

            async def stream_connected(
                self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
            ) -> None:
                try:
                    await super().stream_connected(reader, writer, listener_name)
                finally:
                    writer.close()

        # amqtt logs every dropped TCP probe as an ERROR; the mesh's own logs say what matters.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._broker = ClosingBroker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


@dataclass(frozen=True)
class MosquittoFiles:
    config: Path
    member_acl: Path


def mosquitto_config(
    out_dir: Path,
    household: str,
    hub_device: str,
    *,
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    crlfile: Path | None,
    port: int = 8883,
    bind: str = "0.0.0.0",
    persistence_dir: Path | None = None,
    max_packet_kb: int = 1024,
) -> MosquittoFiles:
    """Write the household broker's ``mosquitto.conf`` and its ACL (atomically, mode 0644).

    One listener, members only (``port``): mutual TLS 1.3; the client certificate's CN is the device
    id (``use_identity_as_username``), so ``%u`` in the ACL patterns is the device id. A device may
    write its own presence and anyone's request/response topics, and read only its own request and
    response topics and everyone's presence.

    No anonymous listener: pairing runs on a Mosquitto of its own that `hearth household invite`
    starts for one invitation and stops after it (`pairing_config`, `pairing_window`), so nobody
    without a certificate can reach this broker, or store anything on it, at any time.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    root = f"hearth/{household}"
    member_acl = out_dir / "acl"
    _write(
        member_acl,
        [
            "# Hearth members: %u is the client certificate's CN, i.e. the device id.",
            f"pattern write {root}/presence/%u",
            f"pattern read {root}/presence/+",
            f"pattern write {root}/req/+",
            f"pattern read {root}/req/%u",
            f"pattern write {root}/resp/+",
            f"pattern read {root}/resp/%u",
        ],
    )
    lines = [
        "# Written by `hearth broker config`. Every payload is a Hearth envelope; the broker sees ids only.",
        "# Pairing is not here: `hearth household invite` runs its own short-lived Mosquitto.",
        "per_listener_settings true",
        "set_tcp_nodelay true",
        f"max_packet_size {max_packet_kb * 1024}",
        "max_inflight_messages 100",
        "",
        "# Household members: mutual TLS, one client certificate per device.",
        f"listener {port} {bind}",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        *([f"crlfile {crlfile}"] if crlfile is not None else []),
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.3",
        "allow_anonymous false",
        f"acl_file {member_acl}",
    ]
    if persistence_dir is not None:
        lines += ["", "persistence true", f"persistence_location {persistence_dir}/"]
    config = out_dir / "mosquitto.conf"
    _write(config, lines)
    return MosquittoFiles(config, member_acl)


class PairingLimits(BaseModel):
    """What one invitation's pairing broker lets anonymous clients use (attacker-bounding limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int = Field(default=16, ge=1, le=1024)
    """Connections at once, counted when accepted (before the TLS handshake) by the relay in front of
    Mosquitto: Mosquitto 2.0.11's own ``max_connections`` counts a closed connection twice and stops
    holding after a few (fixed in 2.0.12, eclipse-mosquitto/mosquitto commit 79542158)."""
    per_source: int = Field(default=4, ge=1, le=1024)
    """Connections at once from one address."""
    upload_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Bytes one connection may send in all (a pairing sends under 20 KB); past it the relay closes it."""
    lifetime_s: float = Field(default=120.0, gt=0, le=900)
    """Longest one connection may stay open (a pairing takes seconds)."""
    max_packet_bytes: int = Field(default=MAX_PAIRING_PACKET, ge=16 * 1024, le=16 * 1024 * 1024)
    """Largest MQTT packet the pairing broker takes from anyone (the hub's sealed welcome is the
    largest, see pairing_link.MAX_DEVICE_FRAME)."""
    memory_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024)
    """Mosquitto's ``memory_limit`` for the whole pairing broker."""


def pairing_config(
    run_dir: Path,
    invitation: str,
    hub_device: str,
    *,
    anonymous_socket: Path,
    hub_port: int,
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    limits: PairingLimits,
    user: str | None = None,
) -> Path:
    """The config of the Mosquitto that serves one invitation (`pairing_window`); returns its path.

    Two listeners, neither reachable from the network by itself:

    * anonymous (a Unix socket in the private run directory): devices that are pairing, reached only
      through the relay that counts and bounds their connections. Server-authenticated TLS (SPAKE2
      with the setup code authenticates the hub). The ACL names this invitation only, and a client's
      ``%c`` (its client id, which `hearth pair` sets to its random session id) confines it to its
      own session: it reads the open invitation, writes ``hearth/pair/<inv>/hub/<its id>`` and reads
      ``hearth/pair/<inv>/dev/<its id>``; nothing else, not even ``#``.
    * the hub (``127.0.0.1:hub_port``): mutual TLS with the household broker CA; only the hub's
      certificate gets the invitation's hub side.

    A broker of its own, so what Mosquitto 2.0.11 has only globally applies to pairing alone:
    ``retain_available false`` (an anonymous retained publish ends its connection, nothing is stored),
    ``max_packet_size``, ``memory_limit``, small queues, no persistence. ``user``: who Mosquitto runs
    as when started by root (None: not said, it runs as whoever started it).
    """
    pairing_acl, hub_acl = run_dir / "acl-pairing", run_dir / "acl-hub"
    inv = f"hearth/pair/{invitation}"
    _write(
        pairing_acl,
        [
            "# Anonymous devices pairing with this invitation: %c is the client id = session id.",
            "topic read hearth/pair/open",
            f"pattern write {inv}/hub/%c",
            f"pattern read {inv}/dev/%c",
        ],
    )
    _write(
        hub_acl,
        [
            "# The hub, by its broker client certificate (CN = device id).",
            f"user {hub_device}",
            "topic write hearth/pair/open",
            f"topic read {inv}/hub/+",
            f"topic write {inv}/dev/+",
        ],
    )
    lines = [
        "# Written by `hearth household invite` for one invitation; removed when it closes.",
        *([f"user {user}"] if user else []),
        "per_listener_settings true",
        "persistence false",
        "retain_available false",
        f"max_packet_size {limits.max_packet_bytes}",
        f"memory_limit {limits.memory_bytes}",
        "max_inflight_messages 8",
        "max_queued_messages 32",
        f"max_queued_bytes {4 * limits.max_packet_bytes}",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "",
        "# Devices pairing (through the relay only).",
        f"listener 0 {anonymous_socket}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "tls_version tlsv1.3",
        "allow_anonymous true",
        "allow_zero_length_clientid false",
        "max_qos 1",
        f"acl_file {pairing_acl}",
        "",
        "# The hub.",
        f"listener {hub_port} 127.0.0.1",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.3",
        "allow_anonymous false",
        f"acl_file {hub_acl}",
    ]
    config = run_dir / "mosquitto.conf"
    _write(config, lines)
    return config


def _write(path: Path, lines: list[str]) -> None:
    """Atomically: Mosquitto rereads its ACLs on every SIGHUP and must never see half a file."""
    write_atomic(path, "\n".join(lines) + "\n", 0o644)
