"""``hearth peers``: who is on the mesh, how fast and busy they are, and where requests would go."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from edge_agent import aio
from edge_agent.cli.common import ConfigOpt, ProfileOpt, console, load_context, open_hearth, setup_logging
from edge_agent.mesh.protocol import Health
from edge_agent.supervision import HealthReport, LoopHealth, LoopState


def peers(
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    wait: Annotated[
        float, typer.Option(min=0, max=600, help="Seconds to listen for presence adverts.")
    ] = 1.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """List live household peers (signed presence), their measured speeds and RTT, and the routing
    decision this device would make for each task right now.

    Example: hearth peers --config config/fridge-panel.toml
    """
    ctx = load_context(config, profile)
    setup_logging("warning")

    async def go() -> None:
        async with open_hearth(ctx) as hearth:
            report = await hearth.peers(wait_s=wait)
        if as_json:
            out = report.model_dump(mode="json")
            for p in out["peers"]:
                p["class"] = p.pop("device_class")
            print(json.dumps(out, indent=1))
            return
        table = Table("name", "device", "class / profile", "serves (measured)", "queue", "free RAM", "RTT",
                      "path", "seen", "health", title=f"household {report.household}")  # fmt: skip
        for p in report.peers:
            offers = ", ".join(f"{o['task']} {o['rate']:.0f}/s ({o['pack']})" for o in p.offers) or "-"
            path = f"{p.path}, {'forward-secret' if p.envelope == 2 else 'v1 envelope'}"
            if p.coap is not None:
                path += f"\nCoAP {p.coap}"
            table.add_row(p.name, p.device_id[:12], f"{p.device_class} / {p.profile}", offers,
                          str(p.queue_depth), f"{p.free_model_ram_mb} MB",
                          f"{p.rtt_ms:.2f} ms" if p.rtt_ms is not None else "?", path,
                          f"{p.seen_s_ago:.1f} s ago", _peer_health(p.health))  # fmt: skip
        console.print(table)
        if not report.peers:
            console.print("no peers heard; is the hub agent running (`hearth run`) on the same broker?")
        console.print(f"[bold]this agent[/]: {_own_health(report.health)}")
        if report.dropped:
            frames = ", ".join(f"{why} {n}" for why, n in sorted(report.dropped.items()))
            console.print(f"    frames refused: {frames}", markup=False)
        for task, route in report.routes.items():
            console.print(f"[bold]{task}[/] from here → {route['reason']}")
            for line in route["candidates"][1:]:
                console.print(f"    {line}", markup=False)

    aio.run(go())


def _peer_health(health: Health | None) -> str:
    if health is None:
        return "?"
    if not health.restarts and not health.dropped:
        return "ok"
    return f"{health.restarts} restarts, {health.dropped} dropped"


def _own_health(report: HealthReport) -> str:
    """One line: every loop running and nothing dropped, or which loops restarted or dropped what."""
    if not any(loop.supervised for loop in report.loops):
        return "no supervised loops (a one-shot command; the agent's own show with `hearth run` running)"

    def down(loop: LoopHealth) -> bool:
        return loop.supervised and loop.state != LoopState.RUNNING

    troubled = [loop for loop in report.loops if loop.restarts or loop.dropped or down(loop)]
    if not troubled:
        running = sum(loop.supervised for loop in report.loops)
        return f"all {running} loops running, nothing restarted or dropped"
    parts = []
    for loop in troubled:
        bits = [loop.state.value] if down(loop) else []
        if loop.restarts:
            bits.append(f"{loop.restarts} restarts")
        if loop.dropped:
            bits.append("dropped " + ", ".join(f"{why} {n}" for why, n in sorted(loop.dropped.items())))
        if loop.last_error:
            bits.append(f"last: {loop.last_error}")
        parts.append(f"{loop.name} ({'; '.join(bits)})")
    return "; ".join(parts)
