"""The `hearth` command run as a user runs it, in a subprocess, for tests."""

from __future__ import annotations

import subprocess
import sys


def hearth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Its output, after checking it succeeded without a traceback."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout
