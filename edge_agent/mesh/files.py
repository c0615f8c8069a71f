"""Writing and reading mesh state (keys, counters, replay windows, broker files): atomic, durable, private.

A write goes to a fresh temp file created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name in the
target's directory (`tempfile.mkstemp`), so a symlink planted at a predictable ``.tmp`` path cannot
redirect it; the file and then the directory are fsynced around the rename, so a crash leaves the old
file or the new one, never a torn one and never a stray temp file. Secret files are read only if they
are regular files that nobody else can read, as ssh does with its keys.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from edge_agent.errors import IdentityError, StateInUseError


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as mode 0600 via a fsynced temp file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, text, 0o600)


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` with ``mode``: unique temp file, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp creates 0600; public files need more, keys no less
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # replaces a symlink at ``path`` itself, never writes through it
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the new directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path) -> bytes:
    """The bytes of a secret file, refused if it is a symlink, not a regular file, or readable by others.

    Raises FileNotFoundError if it does not exist (callers say what that means), IdentityError otherwise.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IdentityError(
                f"{path}: secret file is a symbolic link; replace it with the file itself "
                f"and run `chmod 600 {path}`"
            ) from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise IdentityError(f"{path}: cannot read secret file ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())  # the file we opened, not whatever the name points to now
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path}: secret file is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path}: secret file is accessible by other users (mode {oct(st.st_mode & 0o777)}); "
                f"run `chmod 600 {path}`"
            )
        return fh.read()


class StateLock:
    """One process at a time uses a mesh state directory: its send counter and replay window are
    only safe with a single writer. The running agent holds this lock for its whole life; a CLI
    command that finds it held talks to that agent over its local socket instead of opening the state
    (two processes sharing a counter made peers refuse the agent's next messages as replays)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._fd: int | None = None

    def held_elsewhere(self) -> bool:
        """True if another process holds the lock right now."""
        if self._fd is not None:
            return False
        try:
            self.acquire()
        except StateInUseError:
            return True
        self.release()
        return False

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateInUseError(
                f"{self.path.parent} is in use by another Hearth process (the running agent); "
                "commands reach it through its local socket"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
