"""The `hearth` command run as a user runs it, in a subprocess, for tests."""

from __future__ import annotations

import os
import subprocess
import sys


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the shared pack store, no stray HEARTH_ overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_") or k == "HEARTH_HOME"}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


def hearth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Its output, after checking it succeeded without a traceback."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout
