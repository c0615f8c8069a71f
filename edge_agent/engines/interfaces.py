"""The task schemas as the engines see them.

The request and result models moved to `edge_agent.client.schemas` (the client API: callers and the
Home Assistant component import them from there without touching the engines). The engines' modules
keep importing them from here; new code outside `engines/` should import `edge_agent.client.schemas`.
"""

from __future__ import annotations

from edge_agent.client.schemas import (
    BYTES_PER_SECOND,
    LANGUAGE,
    MAX_REQUEST_SPEECH_S,
    SAMPLE_RATE,
    ChatMessage,
    Continuation,
    EmbedRequest,
    EmbedResult,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranscribeStats,
    TranscriptSegment,
    TranslateRequest,
    TranslateResult,
    TranslateStats,
    check_utf8,
)

__all__ = [
    "BYTES_PER_SECOND",
    "LANGUAGE",
    "MAX_REQUEST_SPEECH_S",
    "SAMPLE_RATE",
    "ChatMessage",
    "Continuation",
    "EmbedRequest",
    "EmbedResult",
    "FinishReason",
    "GenerateChunk",
    "GenerateRequest",
    "GenerateStats",
    "SpeechSegment",
    "TranscribeRequest",
    "TranscribeResult",
    "TranscribeStats",
    "TranscriptSegment",
    "TranslateRequest",
    "TranslateResult",
    "TranslateStats",
    "check_utf8",
]
