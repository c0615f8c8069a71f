"""``hearth chat`` and ``hearth embed``: one request against the local agent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Annotated

import numpy as np
import typer
from pydantic import ValidationError
from rich.table import Table

from edge_agent import aio
from edge_agent.cli.common import (
    ConfigOpt,
    ProfileOpt,
    console,
    console_err,
    load_context,
    mesh_state_dir,
    open_hearth,
    option_error,
    setup_logging,
)
from edge_agent.client.schemas import EmbedRequest, GenerateChunk, GenerateRequest, GenerateStats

_CHAT_OPTIONS = {o.removeprefix("--").replace("-", "_"): o
                 for o in ("--max-tokens", "--temperature", "--top-p", "--top-k", "--seed")}  # fmt: skip
"""GenerateRequest's fields that `hearth chat` takes as options: a refused value names its option."""


async def stream_chat(source: AsyncIterable[GenerateChunk], *, show_stats: bool) -> tuple[str, GenerateStats]:
    """Print the answer as it streams; return it with its stats."""
    parts: list[str] = []
    stats: GenerateStats | None = None
    async for chunk in source:
        if chunk.text:
            console.print(chunk.text, end="", markup=False, soft_wrap=True)
            parts.append(chunk.text)
        stats = chunk.stats or stats
    console.print()
    assert stats is not None
    if show_stats:
        console_err.print(
            f"[dim]{stats.prompt_tokens} prompt + {stats.completion_tokens} generated tokens · "
            f"first token {stats.ttft_ms:.0f} ms · {stats.decode_tok_s:.0f} tok/s · {stats.finish_reason}[/]"
        )
    return "".join(parts), stats


def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask. Use '-' to read it from stdin.")],
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy; higher = more varied.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass (with temperature > 0).")] = None,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0 = off).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Random seed for reproducible sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop when this text appears (repeatable).")] = None,
    stats: Annotated[bool, typer.Option(help="Print token counts and speed to stderr.")] = True,
    explain: Annotated[
        bool, typer.Option(help="Show where the request runs and why (every candidate and its estimate).")
    ] = False,
    local: Annotated[bool, typer.Option("--local", help="Ignore the mesh; run on this device only.")] = False,
) -> None:
    """Ask the LLM; the answer streams as it is generated.

    With [mesh] enabled and this device paired, the router picks this device or the household peer
    expected to finish first, and fails over mid-answer if that peer goes away.

    Example: hearth chat "Suggest a dinner with eggs and spinach" --max-tokens 120 --explain
    """
    import sys

    if prompt == "-":
        prompt = sys.stdin.read()
    ctx = load_context(config, profile)
    setup_logging(ctx.config.agent.log_level if ctx.config.agent.log_level != "info" else "warning")
    g = ctx.config.generate
    try:
        request = GenerateRequest.from_prompt(
            prompt,
            system=system if system is not None else g.system_prompt,
            max_tokens=g.max_tokens if max_tokens is None else max_tokens,  # 0 is refused, not "default"
            temperature=g.temperature if temperature is None else temperature,
            top_p=g.top_p if top_p is None else top_p,
            top_k=top_k,
            seed=seed,
            stop=stop or [],
        )
    except ValidationError as exc:
        raise option_error(exc, GenerateRequest, _CHAT_OPTIONS) from None

    from edge_agent.mesh.state import HouseholdState

    use_mesh = ctx.config.mesh.enabled and not local and HouseholdState.exists(mesh_state_dir(ctx.config))
    if explain and not use_mesh:
        why = "--local" if local else "[mesh] is disabled" if not ctx.config.mesh.enabled else "not paired"
        console_err.print(f"[dim]route: local ({why}); plan: {ctx.plan.for_task('generate').reason}[/]")

    async def go() -> None:
        async with open_hearth(ctx, use_mesh=use_mesh) as hearth:
            if use_mesh:
                local_ok = ctx.plan.for_task("generate").mode == "local"
                await hearth.wait_for_peers("generate", timeout=0.5 if local_ok else 3.0)
            routed = hearth.generate(request)
            await stream_chat(routed, show_stats=stats)
            if use_mesh:
                if explain:
                    console_err.print("[dim]route: " + routed.reason + "[/]", markup=True)
                    for line in routed.lines:
                        console_err.print(f"[dim]  · {line}[/]")
                console_err.print(f"[dim]served by {routed.hops}[/]")

    aio.run(go())


def embed(
    texts: Annotated[
        list[str], typer.Argument(help="Sentences to embed ('-' reads one per line from stdin).")
    ],
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the vectors as JSON.")] = False,
) -> None:
    """Embed sentences and print their cosine similarities.

    Example: hearth embed "turn off the lights" "switch the lights off" "open the garage"
    """
    import sys

    if texts == ["-"]:
        texts = [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    ctx = load_context(config, profile)
    setup_logging("warning")

    async def go() -> None:
        async with open_hearth(ctx, use_mesh=False) as hearth:
            result, _ = await hearth.embed(EmbedRequest(texts=texts))
        if as_json:
            console.print_json(json.dumps(result.model_dump()))
            return
        print_similarity(texts, np.asarray(result.vectors, dtype=np.float32), result.model)

    aio.run(go())


def print_similarity(texts: list[str], vectors: np.ndarray, model: str) -> None:
    sims = vectors @ vectors.T
    table = Table(title=f"cosine similarity ({model}, {vectors.shape[1]} dims)")
    table.add_column("")
    for i in range(len(texts)):
        table.add_column(f"#{i}", justify="right")
    for i, t in enumerate(texts):
        label = f"#{i} {t[:48]}" + ("…" if len(t) > 48 else "")
        table.add_row(label, *(f"{sims[i, j]:.3f}" for j in range(len(texts))))
    console.print(table)
