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
    member_acl: Path
    pairing_acl: Path


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
    pairing_port: int | None = 8884,
    bind: str = "0.0.0.0",
    persistence_dir: Path | None = None,
    max_packet_kb: int = 1024,
) -> MosquittoFiles:
    """Write ``mosquitto.conf`` and its two ACL files for one household.

    Two listeners with their own settings (``per_listener_settings true``):

    * members (``port``): mutual TLS 1.3; the client certificate's CN is the device id
      (``use_identity_as_username``), so ``%u`` in the ACL patterns is the device id. A device may
      write its own presence and anyone's request/response topics, and read only its own request and
      response topics and everyone's presence. Only the hub may host invitations.
    * pairing (``pairing_port``): server-authenticated TLS, anonymous, and nothing but the pairing
      topics, so a device without a certificate yet can run `hearth pair` (SPAKE2 protects the
      content) and cannot see or touch the household's topics.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    root = f"hearth/{household}"
    member_acl, pairing_acl = out_dir / "acl", out_dir / "acl-pairing"
    member_acl.write_text(
        "\n".join(
            [
                "# Hearth members: %u is the client certificate's CN, i.e. the device id.",
                f"pattern write {root}/presence/%u",
                f"pattern read {root}/presence/+",
                f"pattern write {root}/req/+",
                f"pattern read {root}/req/%u",
                f"pattern write {root}/resp/+",
                f"pattern read {root}/resp/%u",
                "",
                "# The hub hosts invitations (`hearth household invite`).",
                f"user {hub_device}",
                "topic write hearth/pair/open",
                "topic read hearth/pair/+/hub",
                "topic write hearth/pair/+/dev/+",
                "",
            ]
        )
    )
    pairing_acl.write_text(
        "\n".join(
            [
                "# Anonymous devices that are pairing: the open invitation, and their own session.",
                "topic read hearth/pair/open",
                "topic write hearth/pair/+/hub",
                "topic read hearth/pair/+/dev/+",
                "",
            ]
        )
    )
    lines = [
        "# Written by `hearth broker config`. Every payload is a Hearth envelope; the broker sees ids only.",
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
    if pairing_port is not None:
        lines += [
            "",
            "# Pairing only: devices without a certificate yet; SPAKE2 authenticates the hub.",
            f"listener {pairing_port} {bind}",
            f"certfile {certfile}",
            f"keyfile {keyfile}",
            "tls_version tlsv1.3",
            "allow_anonymous true",
            "max_connections 16",
            f"acl_file {pairing_acl}",
        ]
    if persistence_dir is not None:
        lines += ["", "persistence true", f"persistence_location {persistence_dir}/"]
    config = out_dir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return MosquittoFiles(config, member_acl, pairing_acl)
