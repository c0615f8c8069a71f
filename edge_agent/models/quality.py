"""Is a pack right on *this* CPU? Its recorded reference inputs, the unquantized model's answers, a verdict.

Int8 kernels differ by instruction set: on x86 without VNNI, onnxruntime multiplies u8 activations by s8
weights with ``vpmaddubsw``, which adds pairs of products in 16-bit lanes and saturates; VNNI's
``vpdpbusd`` and ARM's ``sdot``/``smull`` do not. A pack that is right on the machine that built it can
be wrong on another, on some inputs only (measured: a padded command came out as nonsense while the same
words unpadded were right). So every quantized pack carries ``quality.json``: hard inputs (short,
padded, noisy, long), what the unquantized model answers to them, and the tolerance its builder
measured; each host checks the pack once against it before the planner may choose it (``host_gate``).

This module is IO-free: the metrics, the reference's wire model and the verdict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.validation import is_plain_relative_path

__all__ = [
    "QUALITY_FILE",
    "Metric",
    "QualityCase",
    "QualityReference",
    "QualityVerdict",
    "case_score",
    "cosine",
    "judge",
    "token_agreement",
    "word_error_rate",
]

QUALITY_FILE = "quality.json"

Metric = Literal["agreement", "cosine"]
"""``agreement``: the share of the reference answer's tokens the pack predicts itself when fed the
reference so far (teacher forcing: for the LLM, Whisper and the translator; unlike comparing free
greedy output, one near-tie flipping early does not change every later token, while a broken kernel
still misses most of them); ``cosine``: of an embedding with the reference's. Higher is better for both."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityCase(_Model):
    """One reference input and what the unquantized model answers to it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$", description="Why this input is hard.")
    text: str | None = Field(default=None, max_length=2000, description="Text input (or prompt).")
    audio: str | None = Field(default=None, description="Pack-relative path of an audio input.")
    expect_text: str | None = Field(default=None, max_length=4000, description="The answer, for people.")
    expect_tokens: list[int] | None = Field(default=None, max_length=256)
    expect_vector: list[float] | None = Field(default=None, max_length=4096)

    @field_validator("audio")
    @classmethod
    def _inside_pack(cls, v: str | None) -> str | None:
        if v is not None and not is_plain_relative_path(v):
            raise ValueError(f"unsafe audio path {v!r}")
        return v


class QualityReference(_Model):
    """``quality.json``: written by the builder, read by every host that may run the pack."""

    schema_version: Literal[1] = 1
    metric: Metric
    cases: list[QualityCase] = Field(min_length=1, max_length=16)
    threshold: float = Field(description="The worst case allowed (the least, for both metrics).")
    built_score: float = Field(description="The worst case on the building CPU, against the reference.")
    built_on: str = Field(max_length=300, description="CPU and instruction sets the builder measured on.")
    reference: str = Field(max_length=200, description="What produced the expected outputs.")


class QualityVerdict(_Model):
    passed: bool
    worst: float
    worst_case: str
    threshold: float
    metric: Metric
    scores: dict[str, float]

    def summary(self) -> str:
        word = "passed" if self.passed else "FAILED"
        return (
            f"{word}: worst {self.metric} {self.worst:.3f} ({self.worst_case}), needs ≥ {self.threshold:.3f}"
        )


# -- metrics ----------------------------------------------------------------------------------------------


def normalise_words(text: str) -> list[str]:
    """Lower case, no punctuation: WER's usual input."""
    text = text.lower().replace("-", " ")
    return re.sub(r"[^a-z0-9' ]+", " ", text).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on normalised words."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def token_agreement(reference: Sequence[int], predicted: Sequence[int]) -> float:
    """Share of positions where the teacher-forced prediction equals the reference token."""
    if not reference:
        return 1.0
    return sum(r == p for r, p in zip(reference, predicted, strict=False)) / len(reference)


# -- verdict ----------------------------------------------------------------------------------------------


def case_score(metric: Metric, case: QualityCase, output: str | list[float] | list[int]) -> float:
    """How close ``output`` is to the case's expected answer, in ``metric``'s units."""
    if metric == "cosine":
        return cosine(case.expect_vector or [], [float(x) for x in output])
    return token_agreement(case.expect_tokens or [], [int(x) for x in output])


def judge(reference: QualityReference, scores: dict[str, float]) -> QualityVerdict:
    """Every case must be within the threshold: one hard input failing is a failing pack."""
    missing = [c.name for c in reference.cases if c.name not in scores]
    if missing:
        raise ValueError(f"no score for reference case(s) {', '.join(missing)}")
    name = min(scores, key=lambda k: scores[k])
    value = scores[name]
    return QualityVerdict(
        passed=value >= reference.threshold,
        worst=value,
        worst_case=name,
        threshold=reference.threshold,
        metric=reference.metric,
        scores=scores,
    )
