"""Self-benchmarks: how fast this device runs each task, measured at start and advertised in its offers
(so routing, here and on peers, uses real speeds). One per task, named by its `TaskSpec`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel

from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranslateRequest,
    TranslateResult,
)

__all__ = [
    "Benchmark",
    "Runner",
    "Speed",
    "bench_batches",
    "bench_embed",
    "bench_generate",
    "bench_transcribe",
    "bench_translate",
    "quiet_noise",
]

_Req = TypeVar("_Req", bound=BaseModel)
_Item = TypeVar("_Item", bound=BaseModel)

Runner = Callable[[_Req], AsyncGenerator[_Item, None]]
"""Runs one request on this device (what a self-benchmark measures)."""


class Speed(NamedTuple):
    """A self-benchmark's measurement, advertised in the task's offer."""

    rate: float
    """Work units per second (see ``TaskSpec.work_units``)."""
    first_ms: float
    """Time to the first token, or one small request's latency."""


Benchmark = Callable[[Runner[_Req, _Item], str | None], Awaitable[Speed]]
"""Measures a task on this device, given a runner and the plan's variant (language pair) if any."""


_BENCH_PROMPT = "Name three fruits."
_BENCH_TEXTS = [
    "Turn off the kitchen lights.",
    "Is the fridge door open?",
    "Play some music.",
    "What's the weather tomorrow?",
] * 2
_BENCH_TRANSLATE = {
    "pt": [
        "Desligue as luzes da cozinha.",
        "A porta da geladeira está aberta?",
        "Toque uma música.",
        "Como vai estar o tempo amanhã?",
    ]
    * 2
}


async def _drain(items: AsyncGenerator[Any, None]) -> None:
    async with contextlib.aclosing(items) as running:
        async for _ in running:
            pass


async def bench_generate(run: Runner[GenerateRequest, GenerateChunk], variant: str | None) -> Speed:
    """Three short answers: the first loads the model; the faster of the others counts."""
    request = GenerateRequest.from_prompt(_BENCH_PROMPT, max_tokens=24)
    runs: list[GenerateStats] = []
    for _ in range(3):
        async for chunk in run(request):
            if chunk.stats is not None:
                runs.append(chunk.stats)
    stats = max(runs[1:], key=lambda s: s.decode_tok_s)
    return Speed(stats.decode_tok_s, stats.ttft_ms)


async def bench_batches(run: Runner[_Req, _Item], one: _Req, batch: _Req, size: int) -> Speed:
    """A one-item request (loads the model), the same again (latency), then a batch of ``size`` items."""
    await _drain(run(one))
    t1 = time.perf_counter()
    await _drain(run(one))
    first = time.perf_counter() - t1
    t2 = time.perf_counter()
    await _drain(run(batch))
    return Speed(size / (time.perf_counter() - t2), first * 1000)


async def bench_embed(run: Runner[EmbedRequest, EmbedResult], variant: str | None) -> Speed:
    texts = _BENCH_TEXTS
    return await bench_batches(run, EmbedRequest(texts=texts[:1]), EmbedRequest(texts=texts), len(texts))


async def bench_translate(run: Runner[TranslateRequest, TranslateResult], variant: str | None) -> Speed:
    assert variant is not None, "translation is planned per language pair"
    source, target = variant.split("-")
    texts = _BENCH_TRANSLATE.get(source, _BENCH_TEXTS)
    one = TranslateRequest(texts=texts[:1], source=source, target=target)
    return await bench_batches(run, one, one.model_copy(update={"texts": texts}), len(texts))


async def bench_transcribe(run: Runner[TranscribeRequest, TranscribeResult], variant: str | None) -> Speed:
    """One window of quiet noise (loads the model), then the same again: Whisper's cost is dominated by
    the encoder, which reads a full 30 s window whatever the speech, plus a few decoding steps. The rate
    is milliseconds of speech per second; the latency is one short command's."""
    import base64

    pcm = quiet_noise(7, seconds=4)  # the same "audio" on every device, so their speeds compare
    request = TranscribeRequest(
        segments=[SpeechSegment(start_ms=0, pcm=base64.b64encode(pcm).decode("ascii"))], max_tokens=32
    )
    await _drain(run(request))
    t0 = time.perf_counter()
    await _drain(run(request))
    elapsed = time.perf_counter() - t0
    return Speed(request.speech_ms / elapsed, elapsed * 1000)


def quiet_noise(seed: int | str, *, seconds: int) -> bytes:
    """Quiet 16 kHz s16le noise, the same bytes for the same seed on every device and run."""
    import random

    rng = random.Random(seed)
    samples = range(16_000 * seconds)
    return b"".join(rng.randint(-200, 200).to_bytes(2, "little", signed=True) for _ in samples)
