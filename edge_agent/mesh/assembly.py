"""One assembly of a device on the mesh: its node, its endpoint and the standard features, built the
same way for every caller (the agent's mesh service, the Home Assistant member, benchmarks, tests).

A device is made from its keys (`MemberKeys`: loaded from a household state, or made in memory by the
simulator), a connector, settings and a supervisor. Each feature receives the endpoint as its
`FeaturePort` when it is built and plugs itself in there (handlers, presence fields); nothing is wired
by assigning attributes afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.mesh.corrections import Corrections
from edge_agent.mesh.endpoint import MeshEndpoint
from edge_agent.mesh.exchanges import Handler
from edge_agent.mesh.features.corrections import CorrectionSync
from edge_agent.mesh.features.group_keys import GroupKeyRotation
from edge_agent.mesh.features.translation_memory import MemoryExchange
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Connector
from edge_agent.mesh.memory import TranslationMemory
from edge_agent.mesh.node import GroupKeys, MeshNode
from edge_agent.mesh.protocol import MAX_COUNT, Health, Presence
from edge_agent.mesh.settings import MeshLimits, MeshSettings
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.coap.links import CoapLinks
from edge_agent.mesh.transports.multi import MultiConnector
from edge_agent.supervision import Supervisor

__all__ = ["Features", "MemberKeys", "MeshParts", "build_member", "build_node", "health_of"]


@dataclass(frozen=True)
class MemberKeys:
    """Who this device is in its household, as a node needs it."""

    identity: DeviceIdentity
    certificate: DeviceCertificate
    membership: Membership
    group_keys: GroupKeys
    state_dir: Path
    """Where the node keeps its send counter and replay window."""

    @classmethod
    def load(cls, state: HouseholdState) -> MemberKeys:
        """The keys saved at pairing (raises NotPairedError if there are none)."""
        membership, data = state.membership()
        return cls(state.identity, data.certificate, membership, data.group_key_ring(), state.counters_dir)


@dataclass(frozen=True)
class Features:
    """The standard features to plug in; each is left out unless asked for."""

    group_keys: bool = False
    """Adopt the hub's rotated group key (and, on the hub, hand it to members on old epochs)."""
    on_group_key: Callable[[bytes, int], None] | None = None
    """Persists a group key adopted from the hub."""
    corrections: Corrections | None = None
    """The household's shared corrections this device keeps, synced and announced in presence."""
    memory: TranslationMemory | None = None
    """A translation memory shared with peers (asked and answered, announced in presence)."""


@dataclass(frozen=True)
class MeshParts:
    node: MeshNode
    endpoint: MeshEndpoint
    rotation: GroupKeyRotation | None = None
    corrections: CorrectionSync | None = None
    memory: MemoryExchange | None = None
    coap: CoapLinks | None = None
    """The CoAP side, when the device's connector includes it."""


ConnectorFor = Callable[[MeshNode], Connector]
"""Makes the connector from the node, for a transport that needs it (CoAP: sessions key OSCORE)."""


def build_node(keys: MemberKeys | HouseholdState, limits: MeshLimits | None = None) -> MeshNode:
    """The node alone (seal, open, membership checks), for callers that drive a transport themselves."""
    if isinstance(keys, HouseholdState):
        keys = MemberKeys.load(keys)
    return MeshNode(keys.identity, keys.membership, keys.state_dir, group_keys=keys.group_keys, limits=limits)


def build_member(
    keys: MemberKeys | HouseholdState,
    connector: Connector | ConnectorFor,
    *,
    settings: MeshSettings | None = None,
    supervisor: Supervisor | None = None,
    presence: Callable[[], Presence] | None = None,
    handler: Handler | None = None,
    features: Features | None = None,
) -> MeshParts:
    """This device on the mesh, unopened: node, endpoint (``presence``: its advert, None for a silent
    one-shot client; ``handler``: serves peers' requests) and the ``features`` asked for."""
    settings = settings or MeshSettings()
    features = features or Features()
    node = build_node(keys, settings.limits)
    made = connector if isinstance(connector, Connector) else connector(node)
    endpoint = MeshEndpoint(
        node, made, presence=presence, handler=handler, settings=settings, supervisor=supervisor
    )
    coap = coap_of(made)
    if coap is not None:
        plug_coap(endpoint, coap)
    rotation = GroupKeyRotation(endpoint, on_adopted=features.on_group_key) if features.group_keys else None
    memory = MemoryExchange(endpoint, features.memory) if features.memory is not None else None
    corrections = CorrectionSync(endpoint, features.corrections) if features.corrections is not None else None
    return MeshParts(node, endpoint, rotation, corrections, memory, coap)


def coap_of(connector: Connector) -> CoapLinks | None:
    """The CoAP side among a connector's transports, if there is one."""
    if isinstance(connector, CoapLinks):
        return connector
    if isinstance(connector, MultiConnector):
        return next((c for _, c in connector.parts if isinstance(c, CoapLinks)), None)
    return None


def plug_coap(endpoint: MeshEndpoint, coap: CoapLinks) -> None:
    """Messages to members that answer CoAP go there first (OSCORE), this device's presence says where
    it answers, and verified adverts say where members do."""
    endpoint.carry(coap, first=True)
    endpoint.contribute_presence(lambda: {"coap": coap.contact()})
    endpoint.watch_presence(coap.heard)


def health_of(supervisor: Supervisor) -> Health:
    """The restarts and drops this device announces in presence (bounded as on the wire)."""
    report = supervisor.report()
    return Health(restarts=min(report.restarts, MAX_COUNT), dropped=min(report.dropped, MAX_COUNT))
