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

import ssl
from pathlib import Path

from edge_agent.config import MeshSection
from edge_agent.errors import ConfigError
from edge_agent.mesh.broker_pki import BrokerPki, PkiError
from edge_agent.mesh.settings import broker_host_port
from edge_agent.mesh.transports.mqtt import MqttClient, MqttConnector


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
