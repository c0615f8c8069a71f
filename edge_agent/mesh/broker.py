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

from edge_agent.mesh.files import write_atomic

log = logging.getLogger(__name__)


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
    """Write ``mosquitto.conf`` and its two ACL files for one household (atomically, mode 0644).

    Two listeners with their own settings (``per_listener_settings true``):

    * members (``port``): mutual TLS 1.3; the client certificate's CN is the device id
      (``use_identity_as_username``), so ``%u`` in the ACL patterns is the device id. A device may
      write its own presence and anyone's request/response topics, and read only its own request and
      response topics and everyone's presence. Only the hub may host invitations.
    * pairing (``pairing_port``): server-authenticated TLS, anonymous, and nothing but the pairing
      topics, so a device without a certificate yet can run `hearth pair` (SPAKE2 protects the
      content) and cannot see or touch the household's topics. A pairing device's MQTT client id is
      its random session id, and ``%c`` patterns confine it to that session: it writes only
      ``hearth/pair/<inv>/hub/<its id>`` and reads only ``hearth/pair/<inv>/dev/<its id>``, so nobody
      else learns its session or speaks in its name.

    What Mosquitto 2.0.11 cannot do per listener: ``max_packet_size``, ``message_size_limit`` and
    ``retain_available`` are global (members need 1 MiB frames and retained presence), and an
    ``acl_file`` cannot refuse the retain flag. So the hub itself drops retained frames and frames
    over 16 KiB on its pairing inbox (see pairing_link); the pairing listener gets what is per
    listener: ``max_connections``, ``max_qos 1`` and no empty client ids.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    root = f"hearth/{household}"
    member_acl, pairing_acl = out_dir / "acl", out_dir / "acl-pairing"
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
            "",
            "# The hub hosts invitations (`hearth household invite`): the last topic level is the",
            "# pairing device's session id, which the pairing listener binds to its client id.",
            f"user {hub_device}",
            "topic write hearth/pair/open",
            "topic read hearth/pair/+/hub/+",
            "topic write hearth/pair/+/dev/+",
        ],
    )
    _write(
        pairing_acl,
        [
            "# Anonymous devices that are pairing: the open invitation, and their own session only.",
            "# %c is the MQTT client id, which `hearth pair` sets to its random session id.",
            "topic read hearth/pair/open",
            "pattern write hearth/pair/+/hub/%c",
            "pattern read hearth/pair/+/dev/%c",
        ],
    )
    lines = [
        "# Written by `hearth broker config`. Every payload is a Hearth envelope; the broker sees ids only.",
        "# Global in Mosquitto 2.0.11 (not per listener): max_packet_size, message_size_limit,",
        "# retain_available. The hub drops retained and >16 KiB frames on its pairing inbox itself.",
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
            "allow_zero_length_clientid false",
            "max_connections 16",
            "max_qos 1",
            f"acl_file {pairing_acl}",
        ]
    if persistence_dir is not None:
        lines += ["", "persistence true", f"persistence_location {persistence_dir}/"]
    config = out_dir / "mosquitto.conf"
    _write(config, lines)
    return MosquittoFiles(config, member_acl, pairing_acl)


def _write(path: Path, lines: list[str]) -> None:
    """Atomically: Mosquitto rereads its ACLs on every SIGHUP and must never see half a file."""
    write_atomic(path, "\n".join(lines) + "\n", 0o644)
