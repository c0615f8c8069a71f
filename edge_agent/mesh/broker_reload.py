"""The broker's side of the files and the process: files Mosquitto reads (`write_public`) and telling
every Mosquitto started on this hub's config to reread them (`reload_mosquitto`, SIGHUP only)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.mesh.files import write_atomic

__all__ = ["ReloadResult", "reload_mosquitto", "write_public"]


@dataclass(frozen=True)
class ReloadResult:
    reloaded: list[int]
    """PIDs of the Mosquitto processes signalled."""
    failed: list[str]
    """Why a process found could not be signalled (one line each)."""

    def describe(self) -> str:
        if self.failed:
            return "could not reload Mosquitto: " + "; ".join(self.failed)
        if not self.reloaded:
            return "no running Mosquitto started on this hub's config was found"
        return f"reloaded Mosquitto (pid {', '.join(map(str, self.reloaded))})"


def reload_mosquitto(configs: Iterable[Path], proc: Path = Path("/proc")) -> ReloadResult:
    """SIGHUP the Mosquitto processes (named ``mosquitto``) whose command line names one of
    ``configs`` after ``-c``/``--config-file``; nothing else is ever signalled."""
    wanted = {c.resolve() for c in configs}
    reloaded: list[int] = []
    failed: list[str] = []
    if not wanted:
        return ReloadResult(reloaded, failed)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "mosquitto":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")  # readable by anyone, unlike its cwd
        except OSError:
            continue  # gone
        if not wanted & _config_args(argv, entry / "cwd"):
            continue
        try:
            os.kill(int(entry.name), signal.SIGHUP)
        except ProcessLookupError:
            continue
        except PermissionError:
            failed.append(f"pid {entry.name}: not permitted (run `systemctl reload mosquitto` or "
                          f"`kill -HUP {entry.name}` as its user)")  # fmt: skip
            continue
        reloaded.append(int(entry.name))
    return ReloadResult(reloaded, failed)


def _config_args(argv: list[bytes], cwd_link: Path) -> set[Path]:
    """The config files a command line names; a relative one against the process's working directory
    (skipped if that is not ours to read)."""
    found: set[Path] = set()
    for flag, value in itertools.pairwise(argv):
        if flag in (b"-c", b"--config-file") and value:
            path = Path(os.fsdecode(value))
            if not path.is_absolute():
                try:
                    path = Path(os.readlink(cwd_link)) / path
                except OSError:
                    continue
            found.add(path.resolve())
    return found


def write_public(path: Path, text: str, mode: int = 0o644) -> None:
    """Broker-side files: the broker runs as its own user (Mosquitto drops to `mosquitto`), so keys
    are group-readable by that group when it exists, certificates world-readable."""
    write_atomic(path, text, mode)
    if mode & 0o040 and not mode & 0o004:
        with contextlib.suppress(LookupError, PermissionError):
            shutil.chown(path, group="mosquitto")
