"""``hearth bench``: the checkout's benchmarks, run as an external subcommand.

The benchmarks (and the peer engines they compare with) live in the source tree, not in the wheel, so the
installed CLI imports nothing from them: it runs ``python -m benchmarks ARGS`` with the same interpreter,
the way git and cargo run their external subcommands, and exits with its code. ``hearth bench --help``
is the benchmarks' own help."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import typer

from edge_agent.errors import ConfigError


def bench(ctx: typer.Context) -> None:
    """Benchmarks vs peer engines on the same weights (llm, embed, translate, asr, mesh, transfer, fuzz);
    `hearth bench --help` lists them. Runs from a source checkout."""
    if importlib.util.find_spec("benchmarks") is None:
        raise ConfigError(
            "hearth bench runs from a source checkout (git clone …; make install-dev): "
            "the benchmarks are not part of the installed package"
        )
    args = list(ctx.args) or ["--help"]
    code = subprocess.run([sys.executable, "-m", "benchmarks", *args], check=False).returncode
    if code:
        raise typer.Exit(code)
