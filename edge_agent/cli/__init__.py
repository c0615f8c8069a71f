"""The ``hearth`` command."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from rich.markup import escape

from edge_agent.cli import (
    bench,
    broker,
    corrections,
    demo,
    ha,
    household,
    infer,
    listen,
    models,
    peers,
    profiles,
    run,
    translate,
)
from edge_agent.cli.common import console_err, out_of_range, range_text
from edge_agent.errors import HearthError
from edge_agent.validation import format_validation_error

app = typer.Typer(
    name="hearth",
    help="Hearth: a private AI mesh for home appliances. Nothing leaves the home.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(profiles.app, name="profiles")
app.add_typer(models.app, name="models")
app.add_typer(household.app, name="household")
app.add_typer(broker.app, name="broker")
app.add_typer(corrections.app, name="corrections")
app.add_typer(ha.app, name="ha")
app.command("pair")(household.pair)
app.command("peers")(peers.peers)
app.command("demo")(demo.demo)
app.command("chat")(infer.chat)
app.command("embed")(infer.embed)
app.command("translate")(translate.translate)
app.command("listen")(listen.listen)
app.command("run")(run.run)
app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(bench.bench)


def _bad_parameter(exc: Exception) -> str:
    """``--runs 0: out of range, must be at least 1`` for an option with typer's min/max, else click's
    own message (``Invalid value for '--beam': Input should be a valid integer``)."""
    param = getattr(exc, "param", None)
    opts: list[str] = list(getattr(param, "opts", None) or [])
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    given = None
    for i, arg in enumerate(sys.argv):
        if arg in opts and i + 1 < len(sys.argv):
            given = sys.argv[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in opts:
            given = arg.split("=", 1)[1]
    try:
        value = float(given) if given is not None else None
    except ValueError:
        value = None
    too_low = lo is not None and value is not None and value < lo
    too_high = hi is not None and value is not None and value > hi
    if opts and (too_low or too_high):
        return str(out_of_range(opts[0], given, range_text(lo, hi)))
    return str(exc.format_message())  # type: ignore[attr-defined]


def main() -> None:
    run_app(app)


def run_app(command: typer.Typer, prog_name: str | None = None) -> None:
    """Run a typer app with the CLI's error manners: one red line naming what was wrong, never a
    traceback (``hearth`` itself, and ``hearth bench``'s commands in the checkout's benchmarks)."""
    try:
        code = command(standalone_mode=False, prog_name=prog_name)
        if isinstance(code, int) and code:  # typer.Exit(n): click returns n instead of exiting
            sys.exit(code)
    except HearthError as exc:
        # escaped: messages name config sections and extras in brackets ([home_assistant], hearth-edge[ha])
        console_err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
        sys.exit(exc.exit_code)
    except ValidationError as exc:  # request options out of range, e.g. --temperature 9
        console_err.print(
            f"[bold red]error:[/] {escape(format_validation_error('invalid request', exc))}", highlight=False
        )
        sys.exit(2)
    except KeyboardInterrupt:
        console_err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and friends
        # Matched by shape, not class: typer >= 0.29 raises its vendored click's exceptions, older
        # releases raise click's own.
        name = type(exc).__name__
        if name == "Exit" and isinstance(getattr(exc, "exit_code", None), int):
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if name == "BadParameter":  # an option's value refused by its type or its min/max: one line
            console_err.print(f"[bold red]error:[/] {escape(_bad_parameter(exc))}", highlight=False)
            sys.exit(2)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if name == "Abort":
            sys.exit(130)
        raise
