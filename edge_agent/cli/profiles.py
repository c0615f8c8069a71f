"""``hearth profiles``: the device classes Hearth knows, and which one this host is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from edge_agent.cli.common import console
from edge_agent.profiles import detect_host, list_profiles, load_profile, nearest_profile, profile_for_host

app = typer.Typer(
    help="Firmware profiles: device classes, their hardware and model budgets.", no_args_is_help=True
)


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List shipped profiles, weakest device first."""
    profiles = list_profiles()
    if as_json:
        console.print_json(json.dumps([p.model_dump() for p in profiles]))
        return
    table = Table(title="Firmware profiles")
    for col in ("id", "class", "cpu", "RAM", "model budget", "quants", "serves"):
        table.add_column(col)
    for p in profiles:
        table.add_row(
            p.id,
            p.device_class,
            f"{p.cpu.cores}x {p.cpu.arch} {p.cpu.clock_ghz} GHz",
            f"{p.ram_mb} MB",
            f"{p.model_ram_budget_mb} MB",
            ",".join(p.quantizations),
            ",".join(p.serves) or "-",
        )
    console.print(table)


@app.command("show")
def show(
    profile_id: Annotated[
        str, typer.Argument(help="Profile id (see `hearth profiles list`) or a YAML path.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Show one profile in full."""
    p = load_profile(profile_id)
    data = p.model_dump()
    if as_json:
        console.print_json(json.dumps(data))
    else:
        console.print(yaml.safe_dump(data, sort_keys=False).rstrip())
        console.print(f"# model RAM budget: {p.model_ram_budget_mb} MB")


@app.command("detect")
def detect(
    write: Annotated[
        Path | None, typer.Option(help="Also write the generated profile to this YAML file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read this host (cores, RAM, ISA flags, GPUs), print the nearest profile and one generated for it."""
    host = detect_host()
    nearest = nearest_profile(host, list_profiles())
    generated = profile_for_host(host, nearest)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "host": {
                        "arch": host.arch,
                        "cpu": host.cpu_model,
                        "cores": host.cores,
                        "clock_ghz": host.clock_ghz,
                        "ram_mb": host.ram_mb,
                        "isa": sorted(host.isa),
                        "gpus": host.gpus,
                    },
                    "nearest": nearest.id,
                    "generated": generated.model_dump(),
                }
            )
        )
    else:
        console.print(
            f"[bold]host[/]: {host.cpu_model}, {host.cores} cores, {host.ram_mb} MB RAM, {host.arch}"
        )
        console.print(f"[bold]ISA[/]: {', '.join(sorted(host.isa)) or 'none detected'}")
        console.print(f"[bold]GPUs[/]: {', '.join(host.gpus) or 'none'}")
        console.print(f"[bold]nearest profile[/]: {nearest.id} ({nearest.display_name})")
        console.print("[bold]generated profile[/] (policy from the nearest):")
        console.print(yaml.safe_dump(generated.model_dump(), sort_keys=False).rstrip())
    if write:
        write.write_text(yaml.safe_dump(generated.model_dump(), sort_keys=False), encoding="utf-8")
        console.print(f"wrote {write}")
