"""The agent's side of MQTT discovery: which broker, and what a running `Hearth` reports.

Kept apart from the publisher (which knows nothing of the agent's config) so the composition root
only asks `publisher_for(...)` with the parts it reads (never the root itself); revocations reach the
publisher through the membership's ``on_revoked`` listeners (see `watch_revocations`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.connect import tls_context
from edge_agent.errors import ConfigError
from edge_agent.ha_discovery.payload import DeviceDescription, DeviceState, discovery_id, object_id_for
from edge_agent.ha_discovery.publisher import ClientFactory, DiscoveryPublisher, Snapshot, clear_devices
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.settings import broker_host_port
from edge_agent.mesh.transports.mqtt import MqttClient
from edge_agent.supervision import Supervisor

if TYPE_CHECKING:
    from edge_agent.profiles.model import FirmwareProfile
    from edge_agent.status import DeviceStatus

log = logging.getLogger(__name__)


def client_factory(config: AgentConfig, state_dir: Path, *, on_mesh: bool) -> ClientFactory:
    """How discovery reaches its broker: ``[home_assistant] mqtt_broker`` with its own credentials, or
    the household's [mesh] broker with the member's TLS identity and credentials. TLS files are
    checked here, once, so a bad path is a startup error that names it."""
    ha, mesh = config.home_assistant, config.mesh
    if ha.mqtt_broker is not None:
        url = ha.mqtt_broker
        tls: ssl.SSLContext | None = None
        if url.startswith("mqtts"):
            try:
                tls = ssl.create_default_context(cafile=str(ha.mqtt_tls_ca) if ha.mqtt_tls_ca else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"[home_assistant] mqtt_tls_ca {ha.mqtt_tls_ca}: {exc}") from None
        username = ha.mqtt_username
        password = ha.mqtt_password.get_secret_value() if ha.mqtt_password else None
    elif on_mesh:
        url, tls = mesh.broker, tls_context(mesh, state_dir)
        username, password = mesh.username, mesh.password
    else:
        raise ConfigError(
            "[home_assistant] mqtt_discovery needs a broker: this device is not on a household mesh, "
            "so set [home_assistant] mqtt_broker (e.g. mqtt://homeassistant.local:1883)"
        )
    host, port = broker_host_port(url)

    def connect(client_id: str, will: tuple[str, bytes] | None) -> MqttClient:
        return MqttClient(host, port, client_id=client_id, username=username, password=password,
                          tls=tls, will=will, keepalive=30)  # fmt: skip

    return connect


def household_hub(membership: Membership, own_id: str) -> DeviceCertificate | None:
    """The hub other devices hang off in Home Assistant: the household's admin hub (the root's own
    device), else its first hub-class member; None on the hub itself or when none is known."""
    hubs = [
        c
        for c in membership.certs.values()
        if c.device_class == "hub" and c.device_id not in membership.revoked
    ]
    hubs.sort(key=lambda c: (not c.admin, c.serial))
    if not hubs or hubs[0].device_id == own_id:
        return None
    return hubs[0]


def household_key(membership: Membership) -> bytes:
    """What paired devices' discovery ids are keyed with: the root public key, which members only hold."""
    return bytes(membership.root_key)


def ids_of(membership: Membership, device_ids: Iterable[str]) -> list[str]:
    """The discovery object ids of these devices (keyed, see `discovery_id`)."""
    key = household_key(membership)
    return [discovery_id(d, key) for d in device_ids]


def snapshot_of(
    name: str,
    profile: FirmwareProfile,
    status: Callable[[], DeviceStatus],
    member: tuple[DeviceCertificate, Membership] | None,
) -> Snapshot:
    """What the running agent reports, read fresh on every call (``status``: the device status
    snapshot; ``member``: this device's certificate and household, when on the mesh)."""

    def snapshot() -> tuple[DeviceDescription, DeviceState]:
        now = status()
        if member is None:
            desc = DeviceDescription(
                object_id=object_id_for(None, name),
                name=name,
                model=profile.id,
                device_class=profile.device_class,
                sw_version=__version__,
            )
            state = DeviceState(
                queue_depth=now.queue_depth, requests_served=0, requests_offloaded=0,
                free_model_ram=now.free_model_ram_mb,
            )  # fmt: skip
            return desc, state
        cert, membership = member
        key = household_key(membership)
        hub = household_hub(membership, cert.device_id)
        desc = DeviceDescription(
            object_id=discovery_id(cert.device_id, key),
            name=cert.name,
            model=profile.id,
            device_class=cert.device_class,
            sw_version=__version__,
            via=discovery_id(hub.device_id, key) if hub is not None else None,
            on_mesh=True,
        )
        state = DeviceState(
            queue_depth=now.queue_depth,
            requests_served=now.served,
            requests_offloaded=now.offloaded,
            free_model_ram=now.free_model_ram_mb,
            speed=dict(now.speed),
            mesh="ON" if now.connected else "OFF",
        )
        return desc, state

    return snapshot


def publisher_for(
    config: AgentConfig,
    state_dir: Path,
    snapshot: Snapshot,
    device_id: str | None,
    supervisor: Supervisor | None = None,
) -> DiscoveryPublisher:
    """The discovery publisher of a serving agent (``[home_assistant] mqtt_discovery = true``), its
    loop under ``supervisor`` (the agent's); ``snapshot`` from `snapshot_of`; ``device_id``: this
    device's, when on the mesh."""
    connect = client_factory(config, state_dir, on_mesh=device_id is not None)
    legacy = [device_id] if device_id is not None else []
    settings = config.home_assistant.discovery_settings(config.mesh.presence_interval_s)
    return DiscoveryPublisher(snapshot, connect, settings,
                              supervisor=supervisor, legacy_ids=legacy)  # fmt: skip


def watch_revocations(publisher: DiscoveryPublisher, membership: Membership) -> Callable[[], None]:
    """Revoked devices' configs are cleared (this device's own included: it then stays silent).
    Returns the function that stops watching."""

    def revoked(device_ids: frozenset[str]) -> None:
        publisher.forget(ids_of(membership, sorted(device_ids)))

    membership.on_revoked.append(revoked)
    return lambda: membership.on_revoked.remove(revoked)


async def clear_revoked(config: AgentConfig, state_dir: Path, device_ids: Iterable[str]) -> None:
    """`hearth household revoke`: clear the revoked devices' discovery configs right away (no agent
    may be running to do it). Raises TransportError if the broker cannot be reached."""
    from edge_agent.mesh.state import HouseholdState

    connect = client_factory(config, state_dir, on_mesh=True)
    membership, _ = HouseholdState(state_dir).membership()
    device_ids = list(device_ids)
    ids = ids_of(membership, device_ids)
    # An older version published under the device id itself: cleared too, but only if it is there (a
    # clear for nothing would tie the device id to its discovery id on the broker).
    await clear_devices(connect, ids, config.home_assistant.discovery_prefix, if_present=device_ids)
