"""The household mesh library: identities, certificates, envelopes, transports, the endpoint and its
features. Never imports onnxruntime, the engines or the agent's config, so a client (the Home Assistant
component) installs and uses it alone (`requirements/mesh.txt`).

Layers, bottom up: identity/household (who is a member) → envelope/replay (sealed frames) →
interfaces + transports (MQTT, in-memory) → node (seal, open, membership checks) → protocol/rpc (wire
models, IO-free rules) → endpoint (messages: connection and dispatch; exchanges: requests, streams,
serving; directory: presence and peers) → features (translation memory, group-key rotation,
corrections), which use the endpoint through `FeaturePort` only; `build_member` assembles them all
(node, endpoint, features) for every caller. The public surface is `__all__`, pinned by
tests/test_exported_members.py.
"""

from __future__ import annotations

from edge_agent._exports import lazy_exports

_EXPORTS = {
    "Address": "edge_agent.mesh.interfaces",
    "Channel": "edge_agent.mesh.interfaces",
    "Connector": "edge_agent.mesh.interfaces",
    "Transport": "edge_agent.mesh.interfaces",
    "DirectLimits": "edge_agent.mesh.settings",
    "MeshLimits": "edge_agent.mesh.settings",
    "MeshSettings": "edge_agent.mesh.settings",
    "DeviceIdentity": "edge_agent.mesh.identity",
    "DeviceCertificate": "edge_agent.mesh.household",
    "HouseholdRoot": "edge_agent.mesh.household",
    "Membership": "edge_agent.mesh.household",
    "RevocationList": "edge_agent.mesh.household",
    "HouseholdState": "edge_agent.mesh.state",
    "Invitation": "edge_agent.mesh.pairing",
    "DevicePairing": "edge_agent.mesh.pairing",
    "GroupKeys": "edge_agent.mesh.node",
    "MeshNode": "edge_agent.mesh.node",
    "MeshEndpoint": "edge_agent.mesh.endpoint",
    # One assembly of a device for every caller: node + endpoint + the standard features.
    "MemberKeys": "edge_agent.mesh.assembly",
    "Features": "edge_agent.mesh.assembly",
    "MeshParts": "edge_agent.mesh.assembly",
    "build_member": "edge_agent.mesh.assembly",
    "FeaturePort": "edge_agent.mesh.features.port",
    "Peer": "edge_agent.mesh.peers",
    "Presence": "edge_agent.mesh.protocol",
    "Offer": "edge_agent.mesh.protocol",
    "GroupKeyRotation": "edge_agent.mesh.features.group_keys",
    "MemoryExchange": "edge_agent.mesh.features.translation_memory",
    "TranslationMemory": "edge_agent.mesh.memory",
    "MqttConnector": "edge_agent.mesh.transports.mqtt",
    "MeshSimulator": "edge_agent.mesh.transports.memory",
    # What a member that runs no models (the Home Assistant component) uses: join and pair, its
    # membership, the peers' presence and update states, corrections, the broker and the LAN advert.
    "MeshMember": "edge_agent.mesh.member",
    "CorrectionSync": "edge_agent.mesh.features.corrections",
    "UpdateStatus": "edge_agent.mesh.protocol",
    "NotPairedError": "edge_agent.mesh.state",
    "join_household": "edge_agent.mesh.join",
    "PairingError": "edge_agent.mesh.pairing",
    "WrongCodeError": "edge_agent.mesh.pairing",
    "new_session": "edge_agent.mesh.pairing",
    "validate_code": "edge_agent.mesh.pairing",
    "HouseholdAdvert": "edge_agent.mesh.advertisement",
    "AdvertisementError": "edge_agent.mesh.advertisement",
    "BrokerPki": "edge_agent.mesh.broker_pki",
    "MqttClient": "edge_agent.mesh.transports.mqtt",
    "broker_host_port": "edge_agent.mesh.settings",
    "presence_household": "edge_agent.mesh.topics",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
