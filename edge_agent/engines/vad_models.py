"""Request, result and parameters of the ``vad`` task: free of numpy and onnxruntime, so the task registry
and the mesh can name them without loading an engine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.client.schemas import BYTES_PER_SECOND, MAX_REQUEST_SPEECH_S, SAMPLE_RATE

CHUNK_SAMPLES = 512
"""Silero VAD v6 at 16 kHz reads 32 ms windows (plus 64 samples of the previous one)."""
MAX_VAD_REQUEST_S = MAX_REQUEST_SPEECH_S
"""Audio per ``VadRequest``: the same bound as a transcription request, for the same reason (one mesh
frame). In-process callers (the voice pipeline) pass numpy arrays of any length instead."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VadParams(_Model):
    """silero-vad's ``get_speech_timestamps`` parameters, with its defaults, except that a span is at
    most ``MAX_REQUEST_SPEECH_S`` by default, so each span fits one transcription request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="Speech starts at this probability.")
    neg_threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Speech ends below this; default max(threshold - 0.15, 0.01).",
    )
    min_speech_duration_ms: int = Field(
        default=250, ge=0, le=10_000, description="Shorter spans are dropped."
    )
    min_silence_duration_ms: int = Field(
        default=100, ge=0, le=10_000, description="Silence that must last this long to end a span."
    )
    speech_pad_ms: int = Field(default=30, ge=0, le=1_000, description="Added at both ends of every span.")
    max_speech_duration_s: float = Field(
        default=MAX_REQUEST_SPEECH_S,
        gt=0.0,
        le=3_600.0,
        description="Longer speech is cut, at its longest inner silence if it has one (padding included).",
    )
    min_silence_at_max_speech_ms: int = Field(
        default=98, ge=0, le=10_000, description="Inner silences shorter than this are not cut points."
    )
    cut_at_longest_silence: bool = Field(
        default=True,
        description="Cut too-long speech at its longest inner silence (silero's default); False: the last.",
    )

    @property
    def effective_neg_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    @model_validator(mode="after")
    def _consistent(self) -> VadParams:
        neg = self.effective_neg_threshold
        if neg >= self.threshold:
            raise ValueError(f"neg_threshold ({neg:g}) must be below threshold ({self.threshold:g})")
        # silero cuts when a span passes max - one window - both pads; that must leave room for speech.
        room_ms = (
            self.max_speech_duration_s * 1000 - CHUNK_SAMPLES * 1000 / SAMPLE_RATE - 2 * self.speech_pad_ms
        )
        if room_ms <= self.min_speech_duration_ms:
            raise ValueError(
                f"max_speech_duration_s ({self.max_speech_duration_s:g}) leaves no room for speech after "
                f"a 32 ms window and 2 x speech_pad_ms ({self.speech_pad_ms}) above min_speech_duration_ms "
                f"({self.min_speech_duration_ms})"
            )
        return self


class VadRequest(_Model):
    """Find the speech in a stretch of audio."""

    pcm: str = Field(
        min_length=4,
        max_length=int(MAX_VAD_REQUEST_S * BYTES_PER_SECOND * 4 / 3) + 4,
        description="Base64 of 16 kHz mono s16le PCM.",
    )
    params: VadParams = Field(default_factory=VadParams)

    def samples(self) -> bytes:
        """The PCM bytes; InvalidAudioError if not base64 of whole 16-bit samples."""
        import base64
        import binascii

        from edge_agent.errors import InvalidAudioError

        try:
            raw = base64.b64decode(self.pcm, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidAudioError("vad request: pcm is not base64") from None
        if len(raw) % 2:
            raise InvalidAudioError(f"vad request: {len(raw)} bytes is not a whole number of 16-bit samples")
        return raw

    @classmethod
    def from_pcm(cls, pcm: bytes, params: VadParams | None = None) -> VadRequest:
        import base64

        return cls(pcm=base64.b64encode(pcm).decode("ascii"), params=params or VadParams())


class VadSpan(_Model):
    """Speech from ``start_ms`` to ``end_ms`` (padding included; rounded outwards to whole ms)."""

    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)


class VadResult(_Model):
    spans: list[VadSpan]
    duration_ms: int = Field(description="Length of the audio examined.")
    model: str
