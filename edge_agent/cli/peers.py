"""``hearth peers``: who is on the mesh, how fast and busy they are, and where requests would go."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

import typer
from rich.table import Table

from edge_agent import aio
from edge_agent.agent import Agent
from edge_agent.cli.common import ConfigOpt, ProfileOpt, console, load_context, mesh_client, setup_logging
from edge_agent.engines.interfaces import EmbedRequest, GenerateRequest


def peers(
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to listen for presence adverts.")] = 1.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """List live household peers (signed presence), their measured speeds and RTT, and the routing
    decision this device would make for each task right now.

    Example: hearth peers --config config/fridge-panel.toml
    """
    ctx = load_context(config, profile)
    setup_logging("warning")

    async def go() -> None:
        async with Agent(ctx.config, ctx.profile, ctx.store) as agent:
            service = mesh_client(ctx, agent)
            async with service:
                await asyncio.sleep(wait)
                await service.wait_for_peers("generate", timeout=0)
                now = time.monotonic()
                rows = service.endpoint.peers.all()
                decisions = {
                    "generate": service.router.decide(
                        "generate",
                        GenerateRequest.from_prompt("x", max_tokens=ctx.config.generate.max_tokens),
                    ),
                    "embed": service.router.decide("embed", EmbedRequest(texts=["x"])),
                }
                if as_json:
                    out = {
                        "peers": [
                            {
                                "name": p.name,
                                "device_id": p.device_id,
                                "profile": p.presence.profile,
                                "class": p.device_class,
                                "rtt_ms": p.rtt_ms,
                                "queue_depth": p.presence.queue_depth,
                                "free_model_ram_mb": p.presence.free_model_ram_mb,
                                "seen_s_ago": round(now - p.seen, 3),
                                "offers": [o.model_dump() for o in p.presence.offers],
                            }
                            for p in rows
                        ],
                        "routes": {
                            t: {"reason": d.reason, "candidates": d.explain()} for t, d in decisions.items()
                        },
                        "dropped": dict(service.node.dropped),
                    }
                    print(json.dumps(out, indent=1))
                    return
                table = Table(
                    "name",
                    "device",
                    "class / profile",
                    "serves (measured)",
                    "queue",
                    "free RAM",
                    "RTT",
                    "seen",
                    title=f"household {service.membership.household_id}",
                )
                for p in rows:
                    offers = (
                        ", ".join(f"{o.task} {o.rate:.0f}/s ({o.pack})" for o in p.presence.offers) or "-"
                    )
                    table.add_row(
                        p.name,
                        p.device_id[:12],
                        f"{p.device_class} / {p.presence.profile}",
                        offers,
                        str(p.presence.queue_depth),
                        f"{p.presence.free_model_ram_mb} MB",
                        f"{p.rtt_ms:.2f} ms" if p.rtt_ms is not None else "?",
                        f"{now - p.seen:.1f} s ago",
                    )
                console.print(table)
                if not rows:
                    console.print(
                        "no peers heard; is the hub agent running (`hearth run`) on the same broker?"
                    )
                for task, d in decisions.items():
                    console.print(f"[bold]{task}[/] from here → {d.reason}")
                    for line in d.explain()[1:]:
                        console.print(f"    {line}", markup=False)

    aio.run(go())
