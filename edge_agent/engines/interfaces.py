"""Request and result models shared by local engines and (later) remote peers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
