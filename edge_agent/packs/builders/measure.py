"""``python -m edge_agent.packs.builders.measure TASK DIR TASK_INFO THREADS``: peak RSS of one real run.

Runs in a fresh process so the number is the engine's own: RSS high-water mark after loading the pack and
serving one worst-case request (full context for an LLM, a full micro-batch at max length for embeddings),
minus RSS before loading.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def main() -> None:
    task, pack_dir, info_json, threads = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    info = json.loads(info_json)
    if task == "generate":
        from edge_agent.client.schemas import GenerateRequest
        from edge_agent.engines.generate import GenerateEngine  # import cost is not the model's

        base = _status_kb("VmRSS")
        engine = GenerateEngine(pack_dir, info, threads)
        # Fill the context: the KV buffer is sized by prompt + max_tokens.
        req = GenerateRequest.from_prompt("Hello! " * 8, max_tokens=info["context_length"] - 64)
        for i, _ in enumerate(engine.stream(req)):
            if i >= 8:
                break
    elif task == "embed":
        from edge_agent.engines.embed import EmbedEngine

        base = _status_kb("VmRSS")
        engine = EmbedEngine(pack_dir, info, threads)
        # Worst cases: max-length texts (largest attention) and a full micro-batch of short ones.
        engine.embed_array(["word " * 400] * 16)
        engine.embed_array(["turn the kitchen lights off"] * int(info.get("micro_batch", 64)))
    elif task == "translate":
        from edge_agent.engines.translate import TranslateEngine

        base = _status_kb("VmRSS")
        engine = TranslateEngine(pack_dir, info, threads)
        # Worst cases: a full micro-batch of long sentences (largest memory), then a short one.
        long = "The kitchen lights, the oven and the dishwasher were all left on last night. " * 3
        engine.translate_sentences([long] * 32)
        engine.translate_sentences(["Turn off the lights."])
    elif task in ("transcribe", "vad"):
        import importlib

        # Each speech engine module knows its own worst case (the longest window a request may carry).
        module = importlib.import_module(f"edge_agent.engines.{task}")
        base = _status_kb("VmRSS")
        module.measure_worst_case(pack_dir, info, threads)
    else:
        raise SystemExit(f"unknown task {task}")
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_ram_mb": (peak - base) / 1024, "baseline_mb": base / 1024}))


if __name__ == "__main__":
    main()
