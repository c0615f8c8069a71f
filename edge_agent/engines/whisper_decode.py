"""Whisper's greedy decoding on onnxruntime: the window loop's inner part, with the hallucination guards.

The encoder runs once per 30 s window and returns every decoder layer's cross-attention K/V. The decoder
graph takes new tokens plus the self-attention cache so far and returns the logits of the last position
only (the prompt's other positions never need the 51,864-way vocabulary projection) and the grown cache.

Token rules follow OpenAI's decoder (and so faster-whisper's): the no-speech probability is read at the
<|startoftranscript|> position; blank and end-of-text are suppressed at the first step; the non-speech
symbol list is always suppressed; with timestamps, OpenAI's timestamp rules (pairs, monotonic, an initial
timestamp of at most 1 s, timestamps forced when their total probability beats any text token).
Without timestamps every timestamp token is suppressed. A decoding loop is cut when the text tokens end
in the same n-gram repeated many times: the repeats are dropped and decoding stops there, instead of
running on to the token limit.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

NEG_INF = np.float32(-np.inf)
MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1.0 s, OpenAI's default
LOOP_MAX_NGRAM = 16

StopReason = Literal["eot", "length", "loop", "cancelled"]


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    sot_prev: int
    sot_lm: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    translate: int | None
    transcribe: int | None

    @classmethod
    def from_task_info(cls, info: dict[str, Any]) -> SpecialTokens:
        s = info["special_tokens"]
        return cls(
            eot=int(s["eot"]),
            sot=int(s["sot"]),
            sot_prev=int(s["sot_prev"]),
            sot_lm=int(s["sot_lm"]),
            no_speech=int(s["no_speech"]),
            no_timestamps=int(s["no_timestamps"]),
            timestamp_begin=int(s["timestamp_begin"]),
            translate=int(s["translate"]) if s.get("translate") is not None else None,
            transcribe=int(s["transcribe"]) if s.get("transcribe") is not None else None,
        )


@dataclass
class WindowResult:
    """One window's decoding: sampled tokens (no end-of-text) and the scores the guards read."""

    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float
    stop: StopReason
    cut_tokens: int = 0  # tokens removed by the loop guard

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


def loop_cut(text_tokens: list[int], max_ngram: int = LOOP_MAX_NGRAM) -> int | None:
    """If ``text_tokens`` end in an n-gram repeated ``max(4, ceil(10 / n))`` or more times back to back,
    the length to keep (everything before the run, plus one copy); else None."""
    length = len(text_tokens)
    for n in range(1, max_ngram + 1):
        repeats = max(4, math.ceil(10 / n))
        if length < n * repeats:
            continue
        block = text_tokens[length - n :]
        count = 1
        while count * n + n <= length and text_tokens[length - (count + 1) * n : length - count * n] == block:
            count += 1
        if count >= repeats:
            return length - (count - 1) * n
    return None


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    if m == -math.inf:
        return m
    return m + math.log(float(np.exp(x - m).sum()))


@dataclass
class DecodeOptions:
    timestamps: bool = False
    max_tokens: int = 224
    suppress: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    blank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # " " and eot


class WhisperDecoder:
    """The two onnxruntime sessions and the greedy loop. Not thread-safe: the engine serialises calls."""

    def __init__(
        self,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        special: SpecialTokens,
        n_vocab: int,
        n_text_ctx: int,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.special = special
        self.n_vocab = n_vocab
        self.n_text_ctx = n_text_ctx
        self.cross_names = [o.name for o in encoder.get_outputs()]
        self.n_layers = len(self.cross_names) // 2
        self.present_names = [f"present_{kv}_{i}" for i in range(self.n_layers) for kv in ("k", "v")]
        self.past_names = [f"past_{kv}_{i}" for i in range(self.n_layers) for kv in ("k", "v")]
        cross_shape = encoder.get_outputs()[1].shape  # V: [1, heads, frames, head_dim]
        self.n_heads, self.head_dim = int(cross_shape[1]), int(cross_shape[3])
        self.output_names = ["logits", *self.present_names]

    def encode(self, mel_window: np.ndarray) -> dict[str, np.ndarray]:
        """Cross-attention K/V of every decoder layer for one ``[1, n_mels, 3000]`` window."""
        outs = self.encoder.run(self.cross_names, {"mel": mel_window})
        return dict(zip(self.cross_names, outs, strict=True))

    def _empty_cache(self) -> list[np.ndarray]:
        empty = np.zeros((1, self.n_heads, 0, self.head_dim), dtype=np.float32)
        return [empty] * (2 * self.n_layers)

    def _step(
        self, tokens: list[int], cache: list[np.ndarray], cross: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed: dict[str, np.ndarray] = {
            "tokens": np.array([tokens], dtype=np.int64),
            "offset": np.array(cache[0].shape[2], dtype=np.int64),
        }
        feed.update(zip(self.past_names, cache, strict=True))
        feed.update(cross)
        logits, *present = self.decoder.run(self.output_names, feed)
        return logits[0], present

    def decode(
        self,
        cross: dict[str, np.ndarray],
        prefix: list[int],
        options: DecodeOptions,
        cancel: threading.Event | None = None,
    ) -> WindowResult:
        """Greedy decoding after ``prefix`` (previous text, if any: ``<|startofprev|> ...``)."""
        sp = self.special
        task = [] if options.timestamps else [sp.no_timestamps]
        # The no-speech probability is read at <|startoftranscript|>, so the prompt runs in two parts.
        logits, cache = self._step([*prefix, sp.sot], self._empty_cache(), cross)
        probs = np.exp(logits - logits.max())
        no_speech_prob = float(probs[sp.no_speech] / probs.sum())
        if task:
            logits, cache = self._step(task, cache, cross)
        prompt_len = len(prefix) + 1 + len(task)
        max_tokens = min(options.max_tokens, self.n_text_ctx - prompt_len)
        base = np.zeros(self.n_vocab, dtype=np.float32)
        base[options.suppress] = NEG_INF
        if not options.timestamps:
            base[sp.timestamp_begin :] = NEG_INF
            base[sp.no_timestamps] = NEG_INF
        tokens: list[int] = []
        text_pos: list[int] = []  # indices into ``tokens`` of text (non-timestamp) tokens
        sum_logprob = 0.0
        stop: StopReason = "length"
        while len(tokens) < max_tokens:
            if cancel is not None and cancel.is_set():
                stop = "cancelled"
                break
            scores = logits + base
            if not tokens:
                scores[options.blank] = NEG_INF
            if options.timestamps:
                self._timestamp_rules(scores, tokens)
            best = int(np.argmax(scores))
            sum_logprob += float(scores[best]) - _logsumexp(scores)
            if best == sp.eot:
                stop = "eot"
                break
            tokens.append(best)
            if best < sp.eot:
                text_pos.append(len(tokens) - 1)
                keep = loop_cut([tokens[i] for i in text_pos])
                if keep is not None:
                    cut_at = text_pos[keep]
                    cut = len(tokens) - cut_at
                    return WindowResult(tokens[:cut_at], sum_logprob, no_speech_prob, "loop", cut)
            if len(tokens) >= max_tokens:
                break
            logits, cache = self._step([best], cache, cross)
        return WindowResult(tokens, sum_logprob, no_speech_prob, stop)

    def teacher_forced(
        self, cross: dict[str, np.ndarray], reference: list[int], options: DecodeOptions
    ) -> list[int]:
        """The greedy choice at each position of ``reference`` (text tokens, then ``eot``) when fed the
        reference so far, for the quality gate: one early difference does not change every later step."""
        sp = self.special
        logits, cache = self._step([sp.sot], self._empty_cache(), cross)
        logits, cache = self._step([sp.no_timestamps], cache, cross)
        base = np.zeros(self.n_vocab, dtype=np.float32)
        base[options.suppress] = NEG_INF
        base[sp.timestamp_begin :] = NEG_INF
        base[sp.no_timestamps] = NEG_INF
        chosen: list[int] = []
        for k, token in enumerate(reference):
            scores = logits + base
            if k == 0:
                scores[options.blank] = NEG_INF
            chosen.append(int(np.argmax(scores)))
            if k + 1 < len(reference):
                logits, cache = self._step([token], cache, cross)
        return chosen

    def run_steps(self, cross: dict[str, np.ndarray], steps: int) -> None:
        """``steps`` single-token decoder steps whatever the model predicts (peak-RAM measurement)."""
        logits, cache = self._step([self.special.sot], self._empty_cache(), cross)
        for _ in range(steps):
            logits, cache = self._step([int(np.argmax(logits[: self.special.eot]))], cache, cross)

    def _timestamp_rules(self, scores: np.ndarray, tokens: list[int]) -> None:
        """OpenAI's ApplyTimestampRules, in place on one row of logits."""
        ts0, eot = self.special.timestamp_begin, self.special.eot
        scores[self.special.no_timestamps] = NEG_INF
        last_ts = len(tokens) >= 1 and tokens[-1] >= ts0
        penultimate_ts = len(tokens) < 2 or tokens[-2] >= ts0
        if last_ts:
            if penultimate_ts:  # a pair just closed: text (or end) comes next
                scores[ts0:] = NEG_INF
            else:  # a lone timestamp must be followed by another timestamp (or end)
                scores[:eot] = NEG_INF
        stamps = [t for t in tokens if t >= ts0]
        if stamps:
            floor = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
            scores[ts0:floor] = NEG_INF
        if not tokens:
            scores[:ts0] = NEG_INF
            scores[ts0 + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = NEG_INF
        shifted = scores - _logsumexp(scores)
        if _logsumexp(shifted[ts0:]) > float(shifted[:ts0].max()):
            scores[:ts0] = NEG_INF
