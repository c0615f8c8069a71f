"""Sentence translation on onnxruntime: Marian encoder + incremental SSRU decoder, greedy or beam search.

The decoder state per hypothesis is one SSRU cell per layer (no growing self-attention cache), so a step
costs the same at position 1 and 100, and a batch of sentences decodes in lock-step with finished rows
dropped. Three things keep it fast on small CPUs:

- sentences are sorted by length and batched, so one ``session.run`` serves many sentences;
- the output layer scores only the lexical shortlist of the batch (a few hundred of 32,000 words);
- the embedding table is int8 and memory-mapped: one copy serves the encoder input, the decoder input
  and the output layer, and only rows in use are paged in.

Peak memory grows with the padded tokens of a batch (about 0.6 MB per token of activations), so small
devices get a smaller ``max_batch_tokens``; throughput barely changes above a few hundred tokens.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import onnxruntime as ort
import sentencepiece as spm

from edge_agent.client.schemas import TranslateRequest, TranslateResult, TranslateStats
from edge_agent.engines.base import Engine, EngineOptions
from edge_agent.engines.sentences import split_sentences
from edge_agent.engines.sessions import cpu_session_options
from edge_agent.errors import InvalidRequestError

EOS = 0
UNK = 1
NEG = np.float32(-1e9)


def positional_table(length: int, dim: int) -> np.ndarray:
    """Marian's sinusoids: sin in the first half of the dimensions, cos in the second (not interleaved)."""
    half = dim // 2
    inv = np.exp(np.arange(half) * -(math.log(10000.0) / (half - 1)))
    angles = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


@dataclass
class _Output:
    """The output layer restricted to candidate ids; ``mask`` [rows, K] adds -1e9 outside each
    sentence's own shortlist (None when every row may use every candidate)."""

    cand: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    mask: np.ndarray | None


@dataclass
class _Encoded:
    """One micro-batch after the encoder: what every decoder step needs, row-aligned with ``rows``."""

    rows: np.ndarray  # indices into the caller's sentence list
    lengths: np.ndarray  # source tokens per row, </s> included
    memory: dict[str, np.ndarray]  # enc_k{l}, enc_v{l}, src_bias


class TranslateEngine(Engine[TranslateRequest, TranslateResult]):
    task = "translate"

    def __init__(
        self,
        pack_dir: Path,
        task_info: dict[str, Any],
        threads: int,
        *,
        use_shortlist: bool = True,
        max_batch: int = 32,
        max_batch_tokens: int = 2048,
    ) -> None:
        self.name = str(task_info.get("model", pack_dir.name))
        self.source = str(task_info["source"])
        self.target = str(task_info["target"])
        self.dim = int(task_info["dim"])
        self.dec_layers = int(task_info["dec_layers"])
        self.max_length_factor = float(task_info.get("max_length_factor", 2.5))
        self.max_source_tokens = int(task_info.get("max_source_tokens", 256))
        self.length_normalize = float(task_info.get("normalize", 1.0))
        self.always_candidates = int(task_info.get("shortlist_first", 50))
        self.use_shortlist = use_shortlist and (pack_dir / "shortlist_ids.npy").exists()
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        opts = cpu_session_options(threads)
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(pack_dir / "encoder.onnx"), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(pack_dir / "decoder_step.onnx"), opts, providers=providers)
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        self.decoder_outputs = [o.name for o in self.decoder.get_outputs()]
        self.sp = spm.SentencePieceProcessor(model_file=str(pack_dir / "vocab.spm"))
        # int8 table and its single scale: rows are dequantized on use (exactly the source weights).
        self.embeddings = np.load(pack_dir / "embeddings.npy", mmap_mode="r")
        self.embedding_scale = np.float32(1.0 / float(task_info["embedding_quant_mult"]))
        self.emb_mult = np.float32(math.sqrt(self.dim))
        self.output_bias = np.load(pack_dir / "output_bias.npy")
        self.output_bias[UNK] = NEG  # Marian never emits <unk>
        if self.use_shortlist:
            self.shortlist_offsets = np.load(pack_dir / "shortlist_offsets.npy", mmap_mode="r")
            self.shortlist_ids = np.load(pack_dir / "shortlist_ids.npy", mmap_mode="r")
        self._full_vocab: np.ndarray | None = None
        self.positions = positional_table(int(self.max_source_tokens * self.max_length_factor) + 2, self.dim)
        self._lock = threading.Lock()

    @classmethod
    def from_pack(cls, pack_dir: Path, task_info: dict[str, Any], options: EngineOptions) -> Self:
        return cls(pack_dir, task_info, options.threads, max_batch_tokens=options.translate_batch_tokens)

    # -- public ---------------------------------------------------------------------------------------

    def run(
        self, request: TranslateRequest, cancel: threading.Event | None = None
    ) -> Iterator[TranslateResult]:
        yield self.translate(request)

    def translate(self, request: TranslateRequest) -> TranslateResult:
        if (request.source, request.target) != (self.source, self.target):
            raise InvalidRequestError(
                f"this model translates {self.source}→{self.target}, not {request.source}→{request.target}"
            )
        # The text was checked where the request entered this device (TaskSpec.validate): once per hop.
        t0 = time.perf_counter()
        segmented = [split_sentences(t) for t in request.texts]
        flat = [s for seg in segmented for s in seg.sentences]
        out, counts = self.translate_sentences(flat, beam_size=request.beam_size)
        translations, i = [], 0
        for seg in segmented:
            n = len(seg.sentences)
            translations.append(seg.join(out[i : i + n]))
            i += n
        stats = TranslateStats(
            sentences=sum(1 for s in flat if s.strip()),
            source_tokens=counts[0],
            target_tokens=counts[1],
            total_ms=(time.perf_counter() - t0) * 1000,
        )
        return TranslateResult(translations=translations, pair=request.pair, model=self.name, stats=stats)

    def translate_sentences(
        self, sentences: list[str], beam_size: int = 1
    ) -> tuple[list[str], tuple[int, int]]:
        """Translations (``""`` for blank input) and (source tokens, target tokens) in total."""
        ids = [self._source_ids(s) if s.strip() else [] for s in sentences]
        out_ids: list[list[int]] = [[] for _ in sentences]
        todo = [i for i, x in enumerate(ids) if x]
        with self._lock:
            for rows in self._micro_batches(todo, ids):
                enc = self._encode(rows, ids)
                out = self._output_layer([ids[i] for i in rows])
                results = self._greedy(enc, out) if beam_size == 1 else self._beam(enc, out, beam_size)
                for row, toks in zip(rows, results, strict=True):
                    out_ids[row] = toks
        texts = [self.sp.decode(t) if t else "" for t in out_ids]
        return texts, (sum(len(x) for x in ids), sum(len(t) for t in out_ids))

    def greedy_ids(self, sentence: str) -> list[int]:
        """Target token ids of one sentence, greedy, ``EOS`` last (a quality reference)."""
        ids = [self._source_ids(sentence)]
        with self._lock:
            tokens = self._greedy(self._encode([0], ids), self._output_layer(ids))[0]
        return [*tokens, EOS]

    def teacher_forced(self, sentence: str, reference: list[int]) -> list[int]:
        """What this pack predicts at each position of ``reference`` when fed the reference so far: the
        quality gate's measure (one early difference does not change every later step)."""
        ids = [self._source_ids(sentence)]
        chosen: list[int] = []
        with self._lock:
            enc, out = self._encode([0], ids), self._output_layer(ids)
            states = [np.zeros((1, self.dim), np.float32) for _ in range(self.dec_layers)]
            prev = np.zeros(1, dtype=np.int64)
            for t, token in enumerate(reference):
                logits, states = self._step(prev, t, states, enc.memory, out, np.arange(1))
                chosen.append(int(out.cand[int(np.argmax(logits[0]))]))
                prev = np.array([token], dtype=np.int64)
        return chosen

    def decode_ids(self, tokens: list[int]) -> str:
        return str(self.sp.decode([t for t in tokens if t != EOS]))

    # -- pieces ---------------------------------------------------------------------------------------

    def _source_ids(self, sentence: str) -> list[int]:
        ids: list[int] = self.sp.encode(sentence.strip())
        if len(ids) + 1 > self.max_source_tokens:
            raise InvalidRequestError(
                f"a sentence has {len(ids)} tokens (limit {self.max_source_tokens - 1}): "
                f"'{sentence[:60]}…'; split it with punctuation"
            )
        return [*ids, EOS]

    def _micro_batches(self, todo: list[int], ids: list[list[int]]) -> list[list[int]]:
        order = sorted(todo, key=lambda i: len(ids[i]))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = len(ids[i])  # ascending, so the newest row is the widest
            if cur and (len(cur) + 1 > self.max_batch or (len(cur) + 1) * width > self.max_batch_tokens):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def _embed(self, token_ids: np.ndarray) -> np.ndarray:
        rows: np.ndarray = self.embeddings[token_ids].astype(np.float32)
        return rows * (self.embedding_scale * self.emb_mult)

    def _encode(self, rows: list[int], ids: list[list[int]]) -> _Encoded:
        lengths = np.array([len(ids[i]) for i in rows])
        width = int(lengths.max())
        tok = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        for r, i in enumerate(rows):
            tok[r, : lengths[r]] = ids[i]
            mask[r, : lengths[r]] = True
        x = self._embed(tok) + self.positions[:width]
        bias = np.where(mask, np.float32(0), NEG).astype(np.float32)[:, None, None, :]
        outs = self.encoder.run(self.encoder_outputs, {"src_embeds": x, "src_bias": bias})
        memory = dict(zip(self.encoder_outputs, outs, strict=True))
        memory["src_bias"] = bias
        return _Encoded(np.array(rows), lengths, memory)

    def _output_layer(self, sources: list[list[int]]) -> _Output:
        """Candidate ids and their output weights/biases: the union of these sentences' shortlists
        (or the whole vocabulary), plus a per-sentence mask so each sentence still chooses only among its
        own shortlist, exactly as if it were translated alone."""
        vocab = self.embeddings.shape[0]
        if not self.use_shortlist:
            if self._full_vocab is None:
                self._full_vocab = self._embed_rows(np.arange(vocab))
            return _Output(np.arange(vocab), self._full_vocab, self.output_bias, None)
        own = np.zeros((len(sources), vocab), dtype=bool)
        own[:, : self.always_candidates] = True
        for row, src in enumerate(sources):
            for tok in set(src):
                own[
                    row, self.shortlist_ids[self.shortlist_offsets[tok] : self.shortlist_offsets[tok + 1]]
                ] = True
        own[:, UNK] = False
        cand = np.flatnonzero(own.any(axis=0))
        mask = None
        if len(sources) > 1:
            mask = np.where(own[:, cand], np.float32(0), NEG).astype(np.float32)
        return _Output(cand, self._embed_rows(cand), self.output_bias[cand], mask)

    def _embed_rows(self, rows: np.ndarray) -> np.ndarray:
        table: np.ndarray = self.embeddings[rows].astype(np.float32)
        return table * self.embedding_scale

    def _step(self, prev: np.ndarray, t: int, states: list[np.ndarray], memory: dict[str, np.ndarray],
              out: _Output, sent: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
        """One decoder step for the hypotheses of sentences ``sent`` (row indices of the batch)."""
        if t == 0:
            x = np.broadcast_to(self.positions[0], (len(prev), self.dim)).copy()
        else:
            x = self._embed(prev) + self.positions[t]
        feed = {"tgt_embed": x, "out_w": out.weight, "out_b": out.bias, **memory}
        for layer, st in enumerate(states, start=1):
            feed[f"state{layer}"] = st
        logits, *new_states = self.decoder.run(self.decoder_outputs, feed)
        if out.mask is not None:
            logits += out.mask[sent]
        return logits, new_states

    def _max_len(self, lengths: np.ndarray) -> np.ndarray:
        return np.floor(lengths * self.max_length_factor).astype(int)

    def _greedy(self, enc: _Encoded, out: _Output) -> list[list[int]]:
        n = len(enc.rows)
        limits = self._max_len(enc.lengths)
        results: list[list[int]] = [[] for _ in range(n)]
        alive = np.arange(n)
        memory = enc.memory
        states = [np.zeros((n, self.dim), np.float32) for _ in range(self.dec_layers)]
        prev = np.zeros(n, dtype=np.int64)
        for t in range(int(limits.max())):
            logits, states = self._step(prev, t, states, memory, out, alive)
            best = out.cand[np.argmax(logits, axis=1)]
            keep = (best != EOS) & (t + 1 < limits[alive])
            for r, tok in zip(alive, best, strict=True):
                if tok != EOS:
                    results[r].append(int(tok))
            if not keep.all():
                if not keep.any():
                    break
                alive, best = alive[keep], best[keep]
                states = [s[keep] for s in states]
                memory = {k: v[keep] for k, v in memory.items()}
            prev = best
        return results

    def _beam(self, enc: _Encoded, out: _Output, beam: int) -> list[list[int]]:
        """Marian-style beam search: a sentence's beam shrinks as hypotheses finish; the best finished
        hypothesis by score / length**normalize wins."""
        n = len(enc.rows)
        limits = self._max_len(enc.lengths)
        # Each live hypothesis: (sentence, tokens, score); rows of the arrays follow this list.
        hyps: list[tuple[int, list[int], float]] = [(s, [], 0.0) for s in range(n)]
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        room = [beam] * n
        memory = enc.memory
        states = [np.zeros((n, self.dim), np.float32) for _ in range(self.dec_layers)]
        prev = np.zeros(n, dtype=np.int64)
        sent = np.arange(n)
        t = 0
        while hyps:
            logits, states = self._step(prev, t, states, memory, out, sent)
            logits = logits - logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            picks: list[tuple[int, int, float]] = []  # (hyp row, candidate column, score)
            for s in range(n):
                rows = [r for r, h in enumerate(hyps) if h[0] == s]
                if not rows:
                    continue
                scores = np.array([hyps[r][2] for r in rows])[:, None] + logp[rows]
                k = room[s]
                flat = (
                    np.argpartition(-scores.ravel(), k - 1)[:k] if scores.size > k else np.arange(scores.size)
                )
                flat = flat[np.argsort(-scores.ravel()[flat])]
                for f in flat:
                    r, c = rows[f // scores.shape[1]], int(f % scores.shape[1])
                    picks.append((r, c, float(scores.ravel()[f])))
            next_hyps: list[tuple[int, list[int], float]] = []
            keep_rows: list[int] = []
            for r, c, score in picks:
                s, toks, _ = hyps[r]
                tok = int(out.cand[c])
                if tok == EOS or t + 1 >= limits[s]:
                    done = toks if tok == EOS else [*toks, tok]
                    finished[s].append((score / (len(done) + 1) ** self.length_normalize, done))
                    room[s] -= 1
                else:
                    next_hyps.append((s, [*toks, tok], score))
                    keep_rows.append(r)
            if not next_hyps:
                break
            # Hypotheses of sentences whose beam is used up are dropped.
            live = [i for i, h in enumerate(next_hyps) if room[h[0]] > 0]
            next_hyps = [next_hyps[i] for i in live]
            idx = np.array([keep_rows[i] for i in live], dtype=np.int64)
            if not next_hyps:
                break
            hyps = next_hyps
            states = [st[idx] for st in states]
            sent = np.array([h[0] for h in hyps])
            memory = {k: v[sent] for k, v in enc.memory.items()}
            prev = np.array([h[1][-1] for h in hyps], dtype=np.int64)
            t += 1
        return [max(f)[1] if f else [] for f in finished]
