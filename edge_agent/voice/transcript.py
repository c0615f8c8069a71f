"""What a transcription job yields, as every voice front end (CLI, Wyoming server) consumes it.

A recording becomes windows of speech (VAD spans joined up to one request's worth); each window is one
request, served here or by a peer, and yields one ``TranscriptPiece`` as soon as it is done, so a front
end can show (or stream to Home Assistant) the words before the whole recording is transcribed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.client.schemas import TranscriptSegment


class TranscriptPiece(BaseModel):
    """One window's words, in recording order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, description="Window number, from 0.")
    text: str
    segments: list[TranscriptSegment] = Field(default_factory=list)
    served_by: str = Field(description="Device id that ran Whisper on this window ('local' here).")
    speech_ms: int = 0
    final: bool = Field(default=False, description="The last window of the recording.")


class Transcriber(Protocol):
    """Transcribes 16 kHz mono s16le PCM (a whole recording): VAD, then windows, routed like any task."""

    def transcribe_pcm(self, pcm: bytes, *, language: str = "en") -> AsyncIterator[TranscriptPiece]:
        """Pieces in order; the last has ``final=True`` (a recording with no speech yields one empty
        final piece). Raises InvalidAudioError for audio it cannot take, NoRouteError when no device
        may transcribe it (policy ``never_offload`` on a device without the pack)."""
        ...


def joined_text(pieces: list[TranscriptPiece]) -> str:
    return " ".join(p.text.strip() for p in pieces if p.text.strip())
