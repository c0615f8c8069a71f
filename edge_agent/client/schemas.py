"""The request and result schemas of every task: what a caller sends and gets back, whoever answers.

Shared by callers (CLI, Home Assistant, later the HTTP API), the router, the mesh's request bodies and
the local engines, which import them from here. Pydantic only: importing this module loads no engine,
mesh or config code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    field_serializer,
    field_validator,
    model_validator,
)

from edge_agent.errors import InvalidRequestError

FinishReason = Literal["stop", "length", "stop_sequence", "cancelled"]


def check_utf8(text: str, where: str) -> str:
    """Reject strings that cannot be UTF-8 (lone surrogates from undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise InvalidRequestError(
            f"{where} is not valid UTF-8 text (byte 0x{bad.hex()} at character {exc.start})"
        ) from None
    return text


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant"]
    content: str


class Continuation(_Model):
    """Resume an interrupted answer: the tokens already produced and the text already shown.

    Used for failover: another device (or this one) feeds prompt + ``token_ids`` and carries on, so the
    caller's stream has no gap and no repeat. ``emitted_text`` may trail the tokens (text held back while
    it might start a stop sequence); the engine re-derives that held-back tail itself.
    """

    token_ids: list[int] = Field(default_factory=list, max_length=8192)
    emitted_text: str = ""


class GenerateRequest(_Model):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=8192)
    min_tokens: int = Field(
        default=0,
        ge=0,
        le=8192,
        description="Suppress end-of-turn until this many tokens are generated (resumed tokens count).",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1000, description="0 disables top-k.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: list[str] = Field(default_factory=list, max_length=8)
    continuation: Continuation | None = None

    @model_validator(mode="after")
    def _min_within_max(self) -> GenerateRequest:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")
        return self

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("stop sequences must not be empty strings")
        return v

    def validate_text(self) -> None:
        """Raise InvalidRequestError for empty or non-UTF-8 input (pydantic accepts both)."""
        for i, m in enumerate(self.messages):
            check_utf8(m.content, f"message {i} ({m.role})")
        for i, s in enumerate(self.stop):
            check_utf8(s, f"stop sequence {i}")
        if not any(m.content.strip() for m in self.messages if m.role == "user"):
            raise InvalidRequestError("empty prompt: no user message has any text")

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kw: object) -> GenerateRequest:
        msgs = [ChatMessage(role="system", content=system)] if system else []
        msgs.append(ChatMessage(role="user", content=prompt))
        return cls(messages=msgs, **kw)  # type: ignore[arg-type]


class GenerateStats(_Model):
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    decode_tok_s: float
    total_ms: float
    finish_reason: FinishReason


class GenerateChunk(_Model):
    """One piece of a streamed answer; the last chunk carries ``stats``.

    ``token_ids`` are every token generated since the previous chunk (some tokens produce no text yet),
    so the concatenation over a stream is the exact token sequence, which failover needs.
    """

    index: int
    text: str
    token_ids: list[int] = Field(default_factory=list)
    stats: GenerateStats | None = None


class EmbedRequest(_Model):
    texts: list[str] = Field(min_length=1)

    def validate_text(self, max_batch: int) -> None:
        if len(self.texts) > max_batch:
            raise InvalidRequestError(f"batch of {len(self.texts)} texts is too large (limit {max_batch})")
        for i, t in enumerate(self.texts):
            check_utf8(t, f"text {i}")
            if not t.strip():
                raise InvalidRequestError(f"text {i} is empty")


class EmbedResult(_Model):
    vectors: list[list[float]]
    dim: int
    model: str
    truncated: list[int] = Field(default_factory=list, description="Indices cut at the model's max length.")


LANGUAGE = r"^[a-z]{2,3}$"


class TranslateRequest(_Model):
    """Translate texts (each may be a paragraph; it is split into sentences and rejoined)."""

    texts: list[str] = Field(min_length=1, max_length=256)
    source: str = Field(pattern=LANGUAGE, description="ISO 639-1 code of the input, e.g. 'en'.")
    target: str = Field(pattern=LANGUAGE, description="ISO 639-1 code of the output, e.g. 'pt'.")
    beam_size: int = Field(default=1, ge=1, le=8, description="1 is greedy (the model's own default).")
    max_chars: int = Field(default=20_000, ge=1, le=200_000, description="Per text; longer is refused.")
    remember: bool = Field(
        default=True,
        description="Whether the device that translates may keep the result in the household's shared "
        "translation memory (False when the requester's policy turns sharing off).",
    )
    apply_corrections: bool = Field(
        default=True,
        description="Whether the device that translates answers with the household's corrections; False "
        "when the requester applied them itself (as it holds them, with those it declined left out).",
    )

    @property
    def pair(self) -> str:
        return f"{self.source}-{self.target}"

    def validate_text(self) -> None:
        for i, t in enumerate(self.texts):
            check_utf8(t, f"text {i}")
            if len(t) > self.max_chars:
                raise InvalidRequestError(f"text {i} has {len(t)} characters (limit {self.max_chars})")
        if not any(t.strip() for t in self.texts):
            raise InvalidRequestError("nothing to translate: every text is empty")


class TranslateStats(_Model):
    sentences: int
    source_tokens: int
    target_tokens: int
    total_ms: float
    cached: int = Field(default=0, description="Sentences answered from the translation memory.")
    corrected: int = Field(default=0, description="Sentences answered by a household correction.")


class TranslateResult(_Model):
    translations: list[str]
    pair: str
    model: str
    stats: TranslateStats


# -- speech -------------------------------------------------------------------------------------------

SAMPLE_RATE = 16_000
"""Every engine and every wire message carries audio as 16 kHz mono signed 16-bit little-endian PCM."""
BYTES_PER_SECOND = SAMPLE_RATE * 2
MAX_REQUEST_SPEECH_S = 12.0
"""Speech per transcription request. Whisper reads 30 s windows, but a request must fit one mesh frame
(1 MiB), and frames are padded to a power of two past 4 KiB, so a request's JSON must stay under 512 KiB:
12 s is 384 kB of PCM, 512 kB in base64. Longer speech is several requests, so a peer dying
mid-recording loses one window, not the job (tests/test_voice_pipeline.py seals the largest one)."""


_MAX_PCM_BASE64 = int(MAX_REQUEST_SPEECH_S * BYTES_PER_SECOND * 4 / 3) + 4
_MAX_PCM_BYTES = _MAX_PCM_BASE64 // 4 * 3
"""The same bound on the bytes: exactly those whose base64 fits ``_MAX_PCM_BASE64``."""


def _base64_length(n: int) -> int:
    return 4 * -(-n // 3)


class SpeechSegment(_Model):
    """A stretch of speech the VAD found (the silence around it never leaves the device).

    The PCM is base64 text on the wire (the request body, and what a peer's request holds), bytes on the
    device that made it (``from_pcm``): encoded only when the request is serialised, and a peer's text
    decoded once (``samples`` keeps the bytes). Both forms compare equal when they carry the same audio.
    """

    start_ms: int = Field(ge=0, le=24 * 3600 * 1000, description="Offset in the original recording.")
    pcm: (
        Annotated[str, Strict(), Field(min_length=4, max_length=_MAX_PCM_BASE64)]
        | Annotated[bytes, Strict(), Field(min_length=1, max_length=_MAX_PCM_BYTES)]
    ) = Field(description="Base64 of 16 kHz mono s16le PCM (bytes until serialised).")
    _decoded: bytes | None = PrivateAttr(default=None)

    @field_serializer("pcm")
    def _pcm_wire(self, pcm: str | bytes) -> str:
        if isinstance(pcm, bytes):
            import base64

            return base64.b64encode(pcm).decode("ascii")
        return pcm

    def samples(self, where: str) -> bytes:
        """The PCM bytes; InvalidAudioError (naming ``where``) if not base64 of whole 16-bit samples."""
        from edge_agent.errors import InvalidAudioError

        raw = self.pcm if isinstance(self.pcm, bytes) else self._decoded
        if raw is None:
            import base64
            import binascii

            try:
                raw = base64.b64decode(self.pcm, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidAudioError(f"{where}: pcm is not base64") from None
            self._decoded = raw
        if len(raw) % 2:
            raise InvalidAudioError(f"{where}: {len(raw)} bytes is not a whole number of 16-bit samples")
        return raw

    @property
    def duration_ms(self) -> int:
        """As the wire form counts it (whole base64 groups), so both ends of a request agree."""
        wire = len(self.pcm) if isinstance(self.pcm, str) else _base64_length(len(self.pcm))
        return (wire * 3 // 4) * 1000 // BYTES_PER_SECOND

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, SpeechSegment):
            return NotImplemented
        return self.start_ms == other.start_ms and self._pcm_wire(self.pcm) == other._pcm_wire(other.pcm)

    @classmethod
    def from_pcm(cls, start_ms: int, pcm: bytes) -> SpeechSegment:
        """A segment carrying ``pcm`` as bytes: no base64 until the request is serialised."""
        return cls(start_ms=start_ms, pcm=bytes(pcm))


class TranscribeRequest(_Model):
    """Transcribe speech segments (in order) as one window: Whisper sees them joined, with short gaps."""

    segments: list[SpeechSegment] = Field(min_length=1, max_length=64)
    language: str = Field(default="en", pattern=LANGUAGE, description="Spoken language (tiny.en: en).")
    timestamps: bool = Field(default=False, description="Segment times from Whisper's timestamp tokens.")
    max_tokens: int = Field(default=224, ge=1, le=224, description="Per 30 s window (Whisper's limit).")

    def validate_audio(self) -> None:
        """InvalidAudioError for bad PCM or more speech than one request may carry."""
        total = 0
        for i, seg in enumerate(self.segments):
            total += len(seg.samples(f"segment {i}"))
        if total == 0:
            from edge_agent.errors import InvalidAudioError

            raise InvalidAudioError("no audio: every segment is empty")
        if total > MAX_REQUEST_SPEECH_S * BYTES_PER_SECOND:
            from edge_agent.errors import InvalidAudioError

            raise InvalidAudioError(
                f"{total / BYTES_PER_SECOND:.1f} s of speech in one request "
                f"(limit {MAX_REQUEST_SPEECH_S:.0f} s)"
            )

    @property
    def speech_ms(self) -> int:
        return sum(seg.duration_ms for seg in self.segments)


class TranscriptSegment(_Model):
    start_ms: int
    end_ms: int
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    dropped: str | None = Field(
        default=None, description="Why the hallucination guards dropped this text (then ``text`` is '')."
    )


class TranscribeStats(_Model):
    speech_ms: int
    windows: int
    tokens: int
    total_ms: float

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio time (below 1 is faster than real time)."""
        return self.total_ms / self.speech_ms if self.speech_ms else 0.0


class TranscribeResult(_Model):
    text: str
    segments: list[TranscriptSegment]
    language: str
    model: str
    stats: TranscribeStats
