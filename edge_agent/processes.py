"""Stopping a child process we started: by its PID, politely first (SIGTERM lets an agent empty its
retained presence and a broker write its persistence file), then SIGKILL if it does not exit."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
