"""Inference engines on onnxruntime. Never imports the mesh: engines only know packs and profiles."""

from edge_agent.engines.interfaces import (
    ChatMessage,
    Continuation,
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
)

__all__ = [
    "ChatMessage",
    "Continuation",
    "EmbedRequest",
    "EmbedResult",
    "GenerateChunk",
    "GenerateRequest",
    "GenerateStats",
]
