"""Brokers: an embedded amqtt broker for the no-install default, and a Mosquitto config for production.

The broker is never trusted with content (every payload is an envelope), but it is the mesh's choke
point, so production runs Mosquitto with TLS, client certificates or passwords, and per-device ACLs
written as ``acl_file`` patterns (Mosquitto 2.0.11's dynamic-security plugin does not substitute
``%u``/``%c``; eclipse-mosquitto/mosquitto#2222).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """amqtt in this process: loopback-only by default, anonymous (the envelopes carry the security)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host, self.port = host, port
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        # amqtt logs every dropped TCP probe as an ERROR; the mesh's own logs say what matters.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._broker = Broker(
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
    acl: Path


def mosquitto_config(
    out_dir: Path,
    household: str,
    *,
    port: int = 8883,
    bind: str = "0.0.0.0",
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    persistence_dir: Path | None = None,
    max_packet_kb: int = 1024,
) -> MosquittoFiles:
    """Write ``mosquitto.conf`` + ``acl`` for one household.

    Clients authenticate with a certificate issued by ``cafile`` whose CN is their device id
    (``use_identity_as_username``), so ``%u`` in the ACL patterns is the device id: a device may
    publish its own presence, requests to anyone and responses to anyone, and may read only its own
    request and response topics and everyone's presence. Pairing topics are open to members only.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    root = f"hearth/{household}"
    acl = out_dir / "acl"
    acl.write_text(
        "\n".join(
            [
                "# Hearth per-device ACL: %u is the client certificate's CN, i.e. the device id.",
                f"pattern write {root}/presence/%u",
                f"pattern read {root}/presence/+",
                f"pattern write {root}/req/+",
                f"pattern read {root}/req/%u",
                f"pattern write {root}/resp/+",
                f"pattern read {root}/resp/%u",
                "pattern readwrite hearth/pair/#",
                "",
            ]
        )
    )
    lines = [
        "# Written by `hearth broker config`. Every payload is a Hearth envelope; the broker sees ids only.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl}",
        "set_tcp_nodelay true",
        f"max_packet_size {max_packet_kb * 1024}",
        f"message_size_limit {max_packet_kb * 1024}",
        "max_inflight_messages 100",
        "",
        f"listener {port} {bind}",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.3",
    ]
    if persistence_dir is not None:
        lines += ["", "persistence true", f"persistence_location {persistence_dir}/"]
    config = out_dir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return MosquittoFiles(config, acl)
