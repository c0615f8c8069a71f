"""``python -m benchmarks …`` — what ``hearth bench …`` runs (see ``benchmarks/cli.py``)."""

from benchmarks.cli import app
from edge_agent.cli import run_app

run_app(app, prog_name="hearth bench")
