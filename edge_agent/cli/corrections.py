"""``hearth corrections``: the household's shared translation corrections: list and withdraw."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from edge_agent import aio
from edge_agent.cli.common import ConfigOpt, console, load_context, open_hearth

app = typer.Typer(
    help="Shared translation corrections (made with hearth translate --correct): list and withdraw.",
    no_args_is_help=True,
)


@app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the records as stored).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Every correction this device holds, with who made it and whether it is withdrawn. These are the
    (source, target, pair, model, author, time) records a later fine-tuning step would learn from."""
    ctx = load_context(config, None)

    async def go() -> list[dict[str, object]]:
        async with open_hearth(ctx) as hearth:
            return [r.model_dump(mode="json") | {"id": r.id} for r in await hearth.corrections()]

    records = aio.run(go())
    if as_json:
        print(json.dumps(records, ensure_ascii=False))
        return
    withdrawn = {r["withdraws"] for r in records if r["kind"] == "withdrawal"}
    table = Table(title=f"{sum(1 for r in records if r['kind'] == 'correction')} corrections")
    for column in ("id", "pair", "source", "target", "model", "author", "made", "state"):
        table.add_column(column, overflow="fold")
    for r in records:
        if r["kind"] != "correction":
            continue
        made = datetime.fromtimestamp(float(str(r["created"])), UTC).strftime("%Y-%m-%d %H:%M")
        state = "withdrawn" if r["id"] in withdrawn else "in force"
        cells = [r["id"], r["pair"], r["source"], r["target"], r["model"], str(r["author"])[:8], made, state]
        table.add_row(*(str(c) for c in cells))
    console.print(table)


@app.command()
def withdraw(
    record_id: Annotated[
        str, typer.Argument(metavar="ID", help="The correction's id (hearth corrections list).")
    ],
    here: Annotated[
        bool,
        typer.Option(
            "--here",
            help="Only stop using it for this device's own translations (any member may; nothing is sent).",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Take a correction back on every device of the household: a device the hub approved to correct
    (`hearth household invite --may-correct`) or the hub may take back any. Any device may decline one
    for its own translations with --here. Model output or the translation memory answers that sentence
    again."""
    ctx = load_context(config, None)

    async def go() -> str:
        async with open_hearth(ctx) as hearth:
            record = await hearth.withdraw_correction(record_id.strip().lower(), here=here)
            return str(record.id if here else record.withdraws)

    done = aio.run(go())
    console.print(
        f"declined {done} for this device's own translations" if here
        else f"withdrew {done} (shared with the household)"
    )  # fmt: skip
