"""Why the generate engine uses onnxruntime-genai: the same int4 graph driven by a plain onnxruntime loop.

``python -m benchmarks.ort_loop`` decodes the same prompt greedily both ways on the same pack and threads,
interleaved, and prints medians. The plain loop keeps the KV cache as ORT values bound to the next step's
inputs (no numpy copies of the cache) and does greedy argmax in numpy.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.engines.chat_template import render_chat
from edge_agent.models.store import PackStore

PROMPT = "Write a short story about a robot who learns to cook dinner for a family."


class PlainOrtLoop:
    def __init__(self, pack_dir: Any, threads: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(
            str(pack_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        cfg = json.loads((pack_dir / "genai_config.json").read_text())["model"]["decoder"]
        self.layers, self.kv_heads, self.head = (
            cfg["num_hidden_layers"],
            cfg["num_key_value_heads"],
            cfg["head_size"],
        )
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def run(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        binding = self.sess.io_binding()
        empty = np.zeros((1, self.kv_heads, 0, self.head), dtype=np.float32)
        past = {
            f"past_key_values.{i}.{kv}": ort.OrtValue.ortvalue_from_numpy(empty)
            for i in range(self.layers)
            for kv in ("key", "value")
        }
        step_ids = np.asarray([ids], dtype=np.int64)
        total = len(ids)
        out: list[int] = []
        t0 = time.perf_counter()
        t1 = 0.0
        while len(out) < n:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            binding.bind_cpu_input("input_ids", step_ids)
            binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
            for name, value in past.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.outputs:
                binding.bind_output(name, "cpu")
            self.sess.run_with_iobinding(binding)
            values = binding.get_outputs()
            logits = values[0].numpy()
            token = int(logits[0, -1].argmax())
            out.append(token)
            if len(out) == 1:
                t1 = time.perf_counter()
            past = {
                name.replace("present.", "past_key_values."): value
                for name, value in zip(self.outputs, values, strict=True)
                if name.startswith("present.")
            }
            step_ids = np.asarray([[token]], dtype=np.int64)
            total += 1
        t2 = time.perf_counter()
        return out, (t1 - t0) * 1000, (n - 1) / (t2 - t1)


def main(runs: int = 5, tokens: int = 128, threads: int = 2) -> None:
    from benchmarks.worker import HearthLLM

    pack = PackStore().get("smollm2-135m-instruct@int4")
    genai = HearthLLM({"pack_id": pack.pack_id, "threads": threads})
    loop = PlainOrtLoop(pack.path, threads)
    prompt = render_chat(pack.manifest.task_info["chat_template"], [{"role": "user", "content": PROMPT}])
    ids = genai.tokenize(prompt)

    def run_genai() -> tuple[list[int], float, float]:
        r = genai.run({"prompt_ids": ids, "tokens": tokens})
        return r["tokens"], r["ttft_ms"], r["decode_tok_s"]

    res: dict[str, list[tuple[list[int], float, float]]] = {"genai": [], "plain-ort": []}
    run_genai()
    loop.run(ids, 8)
    for r in range(runs):
        pair = [("genai", run_genai), ("plain-ort", lambda: loop.run(ids, tokens))]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            res[name].append(fn())
    a, b = res["genai"][0][0], res["plain-ort"][0][0]
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    summary = {
        name: {
            "ttft_ms": statistics.median(x[1] for x in v),
            "decode_tok_s": statistics.median(x[2] for x in v),
        }
        for name, v in res.items()
    }
    print(
        json.dumps(
            {"common_prefix_tokens": common, "threads": threads, "tokens": tokens, **summary}, indent=1
        )
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
