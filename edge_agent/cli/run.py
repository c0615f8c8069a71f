"""``hearth run``: start the agent with a profile and config."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from edge_agent.agent import Agent
from edge_agent.cli.common import console, load_context, setup_logging
from edge_agent.cli.infer import print_similarity, stream_chat
from edge_agent.engines.interfaces import EmbedRequest, GenerateRequest
from edge_agent.engines.manager import effective_threads


def run(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile id, YAML path or 'auto'.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Agent config TOML (see config/).")
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Answer the config's [demo] chat + embedding request, then exit.")
    ] = False,
) -> None:
    """Run the edge agent: print its plan, then serve until Ctrl-C (or run the demo job and exit).

    Example: hearth run --profile hub --config config/hub.toml --demo
    """
    ctx = load_context(config, profile)
    setup_logging(ctx.config.agent.log_level)
    cfg = ctx.config
    threads = effective_threads(ctx.profile, cfg.engines.threads)
    console.print(
        f"[bold]Hearth agent[/] '{cfg.agent.name}' on {ctx.profile.display_name} "
        f"(budget {ctx.profile.model_ram_budget_mb} MB, {threads} threads)"
    )
    for task, tp in ctx.plan.tasks.items():
        console.print(
            f"  {task}: {tp.mode}" + (f" → {tp.chosen_id}" if tp.chosen_id else "") + f" ({tp.reason})",
            markup=False,
        )

    async def go() -> None:
        async with Agent(cfg, ctx.profile, ctx.store) as agent:
            if demo:
                g = cfg.generate
                console.print(f"\n[bold]chat[/] » {cfg.demo.chat}")
                await stream_chat(
                    agent,
                    GenerateRequest.from_prompt(
                        cfg.demo.chat,
                        system=g.system_prompt,
                        max_tokens=g.max_tokens,
                        temperature=g.temperature,
                        top_p=g.top_p,
                    ),
                    show_stats=True,
                )
                console.print("\n[bold]embed[/] »", "; ".join(cfg.demo.embed))
                result = await agent.embed(EmbedRequest(texts=cfg.demo.embed))
                print_similarity(cfg.demo.embed, np.asarray(result.vectors, dtype=np.float32), result.model)
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            console.print("serving; Ctrl-C to stop")
            await stop.wait()
            console.print("stopping")

    asyncio.run(go())
