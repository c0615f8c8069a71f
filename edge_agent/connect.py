"""Reaching the household broker from the agent's config: which URL, which TLS context, which client.

Lives outside `edge_agent.mesh` because it reads the agent's config; the mesh itself takes a ready
`Connector`.

Members connect with mutual TLS: the broker is verified against the household's pinned broker CA and
the device shows the client certificate the hub issued at pairing (see broker_pki). A device that is
not paired yet has neither, so `hearth pair` talks to the broker's pairing listener with TLS that
encrypts but does not authenticate the broker: SPAKE2 with the setup code authenticates the hub end to
end, which a CA could not add to, and the pinned CA arrives in the sealed welcome.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

from edge_agent.config import MeshSection
from edge_agent.errors import ConfigError
from edge_agent.mesh.assembly import ConnectorFor
from edge_agent.mesh.broker_pki import BrokerPki, PkiError
from edge_agent.mesh.interfaces import Connector
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.settings import CoapSettings, broker_host_port
from edge_agent.mesh.transports.coap.links import CoapLinks
from edge_agent.mesh.transports.mqtt import MqttClient, MqttConnector
from edge_agent.mesh.transports.multi import MultiConnector


def tls_context(mesh: MeshSection, state_dir: Path, url: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for a member connection to ``url`` (default the mesh broker), None for mqtt://."""
    if not (url or mesh.broker).startswith("mqtts"):
        return None
    try:
        return BrokerPki(state_dir).tls_context(mesh.tls_ca, mesh.tls_cert, mesh.tls_key)
    except PkiError as exc:
        raise ConfigError(str(exc)) from None


def pairing_tls_context(mesh: MeshSection, url: str) -> ssl.SSLContext | None:
    """Encrypted, not authenticated: the setup code (SPAKE2) authenticates the hub, see above."""
    if not url.startswith("mqtts"):
        return None
    if mesh.tls_ca is not None:  # an operator who pinned a CA for this device gets it checked
        ctx = ssl.create_default_context(cafile=str(mesh.tls_ca))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def member_client(
    mesh: MeshSection,
    state_dir: Path,
    client_id: str,
    *,
    will: tuple[str, bytes] | None = None,
    url: str | None = None,
) -> MqttClient:
    """A plain MQTT client with this member's credentials (hosting an invitation, tests)."""
    url = url or mesh.broker
    host, port = broker_host_port(url)
    return MqttClient(host, port, client_id=client_id, username=mesh.username, password=mesh.password,
                      tls=tls_context(mesh, state_dir, url), will=will)  # fmt: skip


def member_connector(
    mesh: MeshSection, state_dir: Path, *, household: str, device: str, client_id: str
) -> MqttConnector:
    """How this member's agent (re)connects to the household mesh."""
    host, port = broker_host_port(mesh.broker)
    return MqttConnector(host, port, household=household, device=device, client_id=client_id,
                         username=mesh.username, password=mesh.password,
                         tls=tls_context(mesh, state_dir))  # fmt: skip


def pairing_client(mesh: MeshSection, url: str | None = None, *, session: str) -> MqttClient:
    """For `hearth pair` on a device with no household yet: the pairing listener, anonymous. The
    client id is the pairing session id, which the listener's ``%c`` ACLs bind the session's topics to."""
    url = url or mesh.pairing_broker or mesh.broker
    host, port = broker_host_port(url)
    shared = url == mesh.broker  # no separate pairing listener: the broker's own login, if any
    return MqttClient(host, port, client_id=session,
                      username=mesh.username if shared else None,
                      password=mesh.password if shared else None,
                      tls=pairing_tls_context(mesh, url))  # fmt: skip


_IFF_UP, _IFF_LOOPBACK, _IFF_MULTICAST = 0x1, 0x8, 0x1000


def _interfaces() -> list[tuple[str, int]]:
    """(name, flags) of this host's network interfaces (Linux /sys; none elsewhere)."""
    found = []
    for name in (
        sorted(p.name for p in Path("/sys/class/net").glob("*")) if Path("/sys/class/net").exists() else []
    ):
        try:
            flags = int((Path("/sys/class/net") / name / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        found.append((name, flags))
    return found


def multicast_interfaces() -> list[str]:
    """Interfaces that are up, not loopback, and can multicast (where All-CoAP-Nodes is joined)."""
    wanted = _IFF_UP | _IFF_MULTICAST
    return [n for n, f in _interfaces() if f & wanted == wanted and not f & _IFF_LOOPBACK][:8]


def interface_addresses() -> list[str]:
    """This host's unicast addresses on interfaces that are up, IPv4 first, loopback last."""
    try:
        import psutil
    except ImportError:
        return []
    ranked: list[tuple[int, str]] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(addr.address.split("%", 1)[0])
            except ValueError:
                continue
            if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            ranked.append((2 * int(ip.is_loopback) + int(ip.version == 6), str(ip)))
    return [ip for _, ip in sorted(ranked)]


def coap_settings(mesh: MeshSection, *, one_shot: bool = False) -> CoapSettings:
    """The CoAP transport's settings for this host: its addresses and interfaces filled in; a one-shot
    command serves on a free port (the agent holds the configured one)."""
    coap = mesh.coap
    wildcard = coap.bind in ("::", "0.0.0.0")
    advertise = coap.advertise or (interface_addresses() if wildcard else [coap.bind])
    return CoapSettings(
        bind=coap.bind,
        port=0 if one_shot else coap.port,
        advertise=advertise[:4] or ["127.0.0.1"],
        seeds=coap.seeds(),
        multicast_interfaces=multicast_interfaces() if coap.multicast and wildcard else [],
        peer_port=coap.port,
        zeroconf=coap.zeroconf,
        request_timeout_s=coap.request_timeout_s,
    )


def household_connector(
    mesh: MeshSection, state_dir: Path, *, household: str, device: str, client_id: str, one_shot: bool = False
) -> Connector | ConnectorFor:
    """How this device (re)connects, by ``[mesh] transports``: the broker's MQTT connector, the CoAP
    links (made from the node: OSCORE is keyed by its sessions), or both as one."""
    mqtt = (
        member_connector(mesh, state_dir, household=household, device=device, client_id=client_id)
        if "mqtt" in mesh.transports
        else None
    )
    if "coap" not in mesh.transports:
        assert mqtt is not None
        return mqtt
    settings = coap_settings(mesh, one_shot=one_shot)

    def made(node: MeshNode) -> Connector:
        coap = CoapLinks(node, settings)
        if mqtt is None:
            return coap
        # A member that answers CoAP is reached there first, else through the broker.
        return MultiConnector(
            [("mqtt", mqtt), ("coap", coap)], lambda device_id: (1, 0) if device_id in coap.book else (0, 1)
        )

    return made
