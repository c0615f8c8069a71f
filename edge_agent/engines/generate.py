"""Chat completion on onnxruntime-genai (measured faster than our own ORT loop and than llama.cpp).

genai owns the KV cache (one shared past/present buffer sized to the request), sampling and the
incremental byte-level detokenizer; we own the chat template, stop sequences, limits and streaming.
It is called through its C API (`genai_native`), which lets go of the GIL while the model runs, so the
agent's event loop keeps serving the mesh during a generation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Self

from edge_agent.client.schemas import FinishReason, GenerateChunk, GenerateRequest, GenerateStats
from edge_agent.engines import genai_native
from edge_agent.engines.base import Engine, EngineOptions
from edge_agent.engines.chat_template import compile_chat, render_chat
from edge_agent.errors import InvalidRequestError


class _StopMatcher:
    """Finds stop sequences in streamed text and holds back text that might start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class GenerateEngine(Engine[GenerateRequest, GenerateChunk]):
    """A loaded LLM pack. One generation at a time (the lock); requests queue behind it."""

    task = "generate"

    def __init__(self, pack_dir: Path, task_info: dict[str, Any], threads: int) -> None:
        self.pack_dir = pack_dir
        self.context_length = int(task_info.get("context_length", 2048))
        self.chat_template = str(task_info["chat_template"])
        self._template: Any = None
        """The chat template compiled, on first use: a template that does not compile fails that
        request with PackError, as it always did; afterwards each prompt renders without a lookup."""
        session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        self.model = genai_native.Model(pack_dir, {"model": {"decoder": {"session_options": session}}})
        self.tokenizer = genai_native.Tokenizer(self.model)
        self._eos = frozenset(int(t) for t in task_info.get("eos_token_ids", self.tokenizer.eos_token_ids))
        self._lock = threading.Lock()

    @classmethod
    def from_pack(cls, pack_dir: Path, task_info: dict[str, Any], options: EngineOptions) -> Self:
        return cls(pack_dir, task_info, options.threads)

    def run(self, request: GenerateRequest, cancel: threading.Event | None = None) -> Iterator[GenerateChunk]:
        yield from self.stream(request, cancel)

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        """Token ids of the rendered chat; the request was checked where it entered the device
        (``TaskSpec.validate``), so only what needs the tokenizer is checked here: it fits the context."""
        if self._template is None:
            self._template = compile_chat(self.chat_template)
        messages = [m.model_dump() for m in request.messages]
        prompt = str(self._template.render(messages=messages, add_generation_prompt=True))
        ids = self.tokenizer.encode(prompt)
        if len(ids) >= self.context_length:
            raise InvalidRequestError(
                f"prompt is {len(ids)} tokens but the context holds {self.context_length}; "
                "shorten it to leave room for the answer"
            )
        return ids

    def stream(
        self, request: GenerateRequest, cancel: threading.Event | None = None
    ) -> Iterator[GenerateChunk]:
        """Blocking token stream; run it in a worker thread from async code."""
        ids = self.prompt_ids(request)
        with self._lock:
            yield from self._run(request, ids, cancel)

    def _run(
        self, request: GenerateRequest, ids: list[int], cancel: threading.Event | None
    ) -> Iterator[GenerateChunk]:
        cont = request.continuation
        prefix = cont.token_ids if cont else []
        if len(ids) + len(prefix) >= self.context_length:
            raise InvalidRequestError(
                f"prompt ({len(ids)}) plus resumed tokens ({len(prefix)}) "
                f"fill the {self.context_length}-token context"
            )
        max_length = min(len(ids) + request.max_tokens, self.context_length)
        options: dict[str, float | int | bool] = {"max_length": max_length}
        if request.min_tokens:
            # genai counts the whole sequence (prompt + resumed + new) and masks every EOS id below it.
            options["min_length"] = min(len(ids) + request.min_tokens, max_length)
        if request.temperature > 0:
            options.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
            if request.top_k:
                options["top_k"] = request.top_k
        else:
            options.update(do_sample=False)
        if request.seed is not None:
            options["random_seed"] = request.seed
        with contextlib.closing(
            genai_native.generate(self.model, self.tokenizer, options, ids, prefix, self._eos)
        ) as steps:
            yield from self._decode(request, ids, prefix, steps, cancel)

    def _decode(
        self,
        request: GenerateRequest,
        ids: list[int],
        prefix: list[int],
        steps: Generator[tuple[int, str], None, None],
        cancel: threading.Event | None,
    ) -> Iterator[GenerateChunk]:
        cont = request.continuation
        stops = _StopMatcher(request.stop)
        _, seen = next(steps)  # the resumed tokens' text, before any model work
        if prefix:
            # Whatever of the resumed tokens' text the caller has not seen yet (held back for stop
            # matching) becomes our pending text.
            shown = cont.emitted_text if cont else ""
            if not seen.startswith(shown):
                raise InvalidRequestError("continuation text does not match its tokens")
            stops.pending = seen[len(shown) :]
        t0 = time.perf_counter()
        next(steps)  # the prefill: the prompt, then the resumed tokens one by one
        t_first: float | None = None
        n = 0
        index = 0
        tokens: list[int] = []
        finish: FinishReason = "length"
        while len(prefix) < request.max_tokens:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            step = next(steps, None)
            if step is None:  # max_length reached
                break
            token, piece = step
            if t_first is None:
                t_first = time.perf_counter()
            n += 1
            if token in self._eos:
                finish = "stop"
                break
            tokens.append(token)
            text, hit = stops.feed(piece)
            if text:
                yield GenerateChunk(index=index, text=text, token_ids=tokens)
                tokens = []
                index += 1
            if hit:
                finish = "stop_sequence"
                break
        if finish == "stop_sequence":
            tokens = []  # the stop sequence's tokens are not part of the answer
        else:
            rest = stops.flush()
            if rest or tokens:
                yield GenerateChunk(index=index, text=rest, token_ids=tokens)
                tokens = []
                index += 1
        t_end = time.perf_counter()
        first = t_first or t_end
        stats = GenerateStats(
            prompt_tokens=len(ids),
            completion_tokens=n,
            ttft_ms=(first - t0) * 1000,
            decode_tok_s=(n - 1) / (t_end - first) if n > 1 and t_end > first else 0.0,
            total_ms=(t_end - t0) * 1000,
            finish_reason=finish,
        )
        yield GenerateChunk(index=index, text="", stats=stats)

    def teacher_forced(self, prompt: str, reference: list[int]) -> list[int]:
        """The greedy choice at every position of ``reference`` when fed the reference so far, for the
        quality gate: unlike free generation, one early difference does not change every later step."""
        ids = self.tokenizer.encode(render_chat(self.chat_template, [{"role": "user", "content": prompt}]))
        max_length = min(len(ids) + len(reference) + 1, self.context_length)
        chosen: list[int] = []
        with self._lock, genai_native.Generator(self.model, {"max_length": max_length}) as generator:
            generator.append_tokens(ids)
            for k, token in enumerate(reference):
                chosen.append(generator.generate_next_token())
                generator.rewind_to(len(ids) + k)
                generator.append_tokens([token])
        return chosen

    def complete(self, request: GenerateRequest) -> tuple[str, GenerateStats]:
        """Non-streaming convenience: the whole answer and its stats."""
        parts: list[str] = []
        stats: GenerateStats | None = None
        for chunk in self.stream(request):
            parts.append(chunk.text)
            stats = chunk.stats or stats
        assert stats is not None
        return "".join(parts), stats
