"""``hearth run``: start the agent with a profile and config."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from edge_agent import aio
from edge_agent.cli.common import console, load_context, setup_logging
from edge_agent.cli.infer import print_similarity, stream_chat
from edge_agent.client.schemas import EmbedRequest, GenerateRequest, TranslateRequest
from edge_agent.engines.manager import effective_threads
from edge_agent.hearth import Hearth


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

    async def demo_job(hearth: Hearth) -> None:
        g = cfg.generate
        request = GenerateRequest.from_prompt(
            cfg.demo.chat,
            system=g.system_prompt,
            max_tokens=g.max_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
        )
        console.print(f"\n[bold]chat[/] » {cfg.demo.chat}")
        routed = hearth.generate(request)
        if hearth.use_mesh:
            console.print(f"[dim]route: {routed.reason}[/]")
        t0 = time.perf_counter()
        _, stats = await stream_chat(routed, show_stats=True)
        if hearth.use_mesh:
            console.print(
                f"[bold]served by {routed.served_by}[/] · {stats.completion_tokens} tokens in "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms end to end over the mesh"
                + (f" · {routed.failovers} failover(s)" if routed.failovers else "")
            )
        console.print("\n[bold]embed[/] »", "; ".join(cfg.demo.embed))
        result, where = await hearth.embed(EmbedRequest(texts=cfg.demo.embed))
        print_similarity(
            cfg.demo.embed, np.asarray(result.vectors, dtype=np.float32), f"{result.model}, {where}"
        )
        to_pt = TranslateRequest(texts=cfg.demo.translate, source="en", target="pt")
        console.print("\n[bold]translate en→pt[/] »", "; ".join(cfg.demo.translate))
        translated, where = await hearth.translate(to_pt)
        for text in translated.translations:
            console.print(f"  {text}", markup=False)
        st = translated.stats
        console.print(
            f"[dim]{translated.model}, {where} · {st.sentences} sentences in {st.total_ms:.0f} ms[/]"
        )

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        console.print("serving; Ctrl-C to stop")
        await stop.wait()
        console.print("stopping")

    async def go() -> None:
        async with Hearth(cfg, ctx.profile, ctx.store, ctx.plan, serve=True) as hearth:
            if hearth.service is not None:
                service = hearth.service
                served = ", ".join(f"{o.task} {o.rate:.0f}/s" for o in service.offers.values()) or "nothing"
                via = []
                if "mqtt" in cfg.mesh.transports:
                    via.append(cfg.mesh.broker + (" (embedded broker)" if service.broker else ""))
                if (coap := service.coap_contact()) is not None:
                    via.append(f"CoAP on udp port {coap.port} (OSCORE, no broker)")
                console.print(
                    f"mesh: household {service.membership.household_id} via {' and '.join(via)}"
                    + f"; measured {served}"
                )
                if demo:
                    await hearth.wait_for_peers("generate", timeout=5.0)
            await (demo_job(hearth) if demo else serve_until_stopped())

    aio.run(go())
