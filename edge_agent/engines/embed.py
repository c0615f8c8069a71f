"""Sentence embeddings on onnxruntime.

Mean pooling and L2 normalisation are part of the exported graph, so one session run gives unit vectors.
Texts are sorted by token length and cut into micro-batches so padding stays small. A micro-batch holds at
most ``max_batch_tokens`` padded tokens: attention memory grows with batch x length^2, so long texts go in
small batches and short ones in large batches, which bounds peak RAM without hurting throughput.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edge_agent.client.schemas import EmbedRequest, EmbedResult
from edge_agent.engines.base import Engine, EngineOptions
from edge_agent.engines.sessions import cpu_session_options


class EmbedEngine(Engine[EmbedRequest, EmbedResult]):
    task = "embed"

    def __init__(self, pack_dir: Path, task_info: dict[str, Any], threads: int, max_batch: int = 256) -> None:
        self.name = str(task_info.get("model", pack_dir.name))
        self.max_seq_length = int(task_info.get("max_seq_length", 256))
        self.dim = int(task_info.get("dim", 384))
        self.micro_batch = int(task_info.get("micro_batch", 64))
        self.max_batch_tokens = int(task_info.get("max_batch_tokens", 512))
        self.max_batch = max_batch
        self.session = ort.InferenceSession(
            str(pack_dir / "model.onnx"),
            sess_options=cpu_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(pack_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._lock = threading.Lock()

    @classmethod
    def from_pack(cls, pack_dir: Path, task_info: dict[str, Any], options: EngineOptions) -> Self:
        return cls(pack_dir, task_info, options.threads, max_batch=options.max_embed_batch)

    def run(self, request: EmbedRequest, cancel: threading.Event | None = None) -> Iterator[EmbedResult]:
        yield self.embed(request)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        request.validate_text(self.max_batch)
        vectors, lengths = self._embed(request.texts)
        truncated = [i for i, n in enumerate(lengths) if n >= self.max_seq_length]
        return EmbedResult(vectors=vectors.tolist(), dim=self.dim, model=self.name, truncated=truncated)

    def embed_array(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings, shape (len(texts), dim), float32."""
        return self._embed(texts)[0]

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Embeddings and each text's token count (after truncation)."""
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            for idx in self._micro_batches(order, lengths):
                width = lengths[idx[-1]]
                ids = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    ids[row, : lengths[i]] = encodings[i].ids
                    mask[row, : lengths[i]] = 1
                feed = {"input_ids": ids, "attention_mask": mask}
                if "token_type_ids" in self.input_names:
                    feed["token_type_ids"] = np.zeros_like(ids)
                (emb,) = self.session.run(["sentence_embedding"], feed)
                out[idx] = emb
        return out, lengths

    def _micro_batches(self, order: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
        """Consecutive runs of the length-sorted order, each within the token and size limits."""
        batches: list[np.ndarray] = []
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < self.micro_batch
                and lengths[order[end]] * (end - start + 1) <= self.max_batch_tokens
            ):
                end += 1
            batches.append(order[start:end])
            start = end
        return batches
