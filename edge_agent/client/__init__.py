"""The client API: what a caller of the household uses, whoever answers and wherever it runs.

- `edge_agent.client.schemas`: every task's request and result models (pydantic only);
- `TASKS` / `Task`: the task names a request or a certificate speaks of;
- `member_router` (a `Router`, answers as `RoutedStream`): routing for a member that runs no models
  (Home Assistant): every task goes to the peer expected to finish first, failing over mid-answer.

The agent's own façade (`Hearth`, or the running agent's local socket) is `edge_agent.facade.Household`.

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
    "TASKS": "edge_agent.tasks",
    "Task": "edge_agent.tasks",
    "member_router": "edge_agent.client.routing",
    "Router": "edge_agent.router",
    "RoutedStream": "edge_agent.router",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
