"""The public surface is exactly `__all__`, like httpx's tests/test_exported_members.py: adding or
removing a name is a deliberate change to this list."""

from __future__ import annotations

import edge_agent
import edge_agent.mesh

EDGE_AGENT = [
    "AgentConfig", "ChatMessage", "ConfigError", "EmbedRequest", "EmbedResult", "EngineError",
    "GenerateChunk", "GenerateRequest", "GenerateStats", "Hearth", "HearthError", "InvalidRequestError",
    "NetworkError", "NoRouteError", "OffloadError", "PeerError", "PeersReport", "Task", "TranslateRequest",
    "TranslateResult", "TransportError", "__version__", "load_config",
]  # fmt: skip
MESH = [
    "Address", "Channel", "Connector", "DeviceCertificate", "DeviceIdentity", "DevicePairing", "FeaturePort",
    "GroupKeyRotation", "GroupKeys", "HouseholdRoot", "HouseholdState", "Invitation", "Membership",
    "MemoryExchange", "MeshEndpoint", "MeshLimits", "MeshNode", "MeshSettings", "MeshSimulator",
    "MqttConnector", "Offer", "Peer", "Presence", "RevocationList", "Transport", "TranslationMemory",
    "DirectLimits",
    # the one assembly (node + endpoint + features) every caller uses
    "Features", "MemberKeys", "MeshParts", "build_member",
    # for a member that runs no models (the Home Assistant component)
    "AdvertisementError", "BrokerPki", "CorrectionSync", "HouseholdAdvert", "MeshMember", "MqttClient",
    "NotPairedError", "PairingError", "UpdateStatus", "WrongCodeError", "broker_host_port",
    "join_household", "new_session", "presence_household", "validate_code",
]  # fmt: skip


def test_edge_agent_exports_exactly_its_all() -> None:
    assert edge_agent.__all__ == sorted(EDGE_AGENT)
    for name in edge_agent.__all__:
        assert getattr(edge_agent, name) is not None, name


def test_mesh_exports_exactly_its_all() -> None:
    assert edge_agent.mesh.__all__ == sorted(MESH)
    for name in edge_agent.mesh.__all__:
        member = getattr(edge_agent.mesh, name)
        assert member.__module__.startswith("edge_agent.mesh"), (name, member.__module__)


CLIENT = [
    "ChatMessage", "Continuation", "EmbedRequest", "EmbedResult", "GenerateChunk", "GenerateRequest",
    "GenerateStats", "RoutedStream", "Router", "SpeechSegment", "TASKS", "Task", "TranscribeRequest",
    "TranscribeResult", "TranslateRequest", "TranslateResult", "member_router",
]  # fmt: skip


def test_client_exports_exactly_its_all() -> None:
    import edge_agent.client

    assert edge_agent.client.__all__ == sorted(CLIENT)
    for name in edge_agent.client.__all__:
        assert getattr(edge_agent.client, name) is not None, name
