"""The client API: what a caller of the household uses, whoever answers and wherever it runs.

- `edge_agent.client.schemas`: every task's request and result models (pydantic only);
- `Household`: the one façade type, implemented by the agent itself (`edge_agent.hearth.Hearth`) and
  by the client of a running agent's local socket (`edge_agent.local_api.LocalClient`);
- `member_router`: routing for a member that runs no models (Home Assistant): every task goes to the
  peer expected to finish first, failing over mid-answer.

Names resolve lazily, so importing the package (the Home Assistant component does) stays light. The
public surface is `__all__`, pinned by tests/test_exported_members.py.
"""

from __future__ import annotations

from edge_agent._exports import lazy_exports

_SCHEMAS = "edge_agent.client.schemas"
_EXPORTS = {
    "ChatMessage": _SCHEMAS,
    "Continuation": _SCHEMAS,
    "EmbedRequest": _SCHEMAS,
    "EmbedResult": _SCHEMAS,
    "GenerateChunk": _SCHEMAS,
    "GenerateRequest": _SCHEMAS,
    "GenerateStats": _SCHEMAS,
    "SpeechSegment": _SCHEMAS,
    "TranscribeRequest": _SCHEMAS,
    "TranscribeResult": _SCHEMAS,
    "TranslateRequest": _SCHEMAS,
    "TranslateResult": _SCHEMAS,
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
