"""Hearth edge agent: a private AI mesh for home appliances.

The public surface is `__all__` (pinned by tests/test_exported_members.py): the `Hearth` façade, the
request and result models, and the error tree. Everything else is internal and may change. Names are
resolved lazily, so `import edge_agent` (or `edge_agent.mesh`, for a client such as the Home Assistant
component) stays light.
"""

from __future__ import annotations

from edge_agent._exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Hearth": "edge_agent.hearth",
    "PeersReport": "edge_agent.facade",
    "AgentConfig": "edge_agent.config",
    "load_config": "edge_agent.config",
    "ChatMessage": "edge_agent.client.schemas",
    "GenerateRequest": "edge_agent.client.schemas",
    "GenerateChunk": "edge_agent.client.schemas",
    "GenerateStats": "edge_agent.client.schemas",
    "EmbedRequest": "edge_agent.client.schemas",
    "EmbedResult": "edge_agent.client.schemas",
    "TranslateRequest": "edge_agent.client.schemas",
    "TranslateResult": "edge_agent.client.schemas",
    "HearthError": "edge_agent.errors",
    "ConfigError": "edge_agent.errors",
    "PeerError": "edge_agent.errors",
    "NetworkError": "edge_agent.errors",
    "TransportError": "edge_agent.errors",
    "OffloadError": "edge_agent.errors",
    "NoRouteError": "edge_agent.errors",
    "InvalidRequestError": "edge_agent.errors",
    "EngineError": "edge_agent.errors",
    "Task": "edge_agent.tasks",
}

__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
