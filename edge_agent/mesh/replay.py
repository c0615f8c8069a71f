"""Message counters: a per-sender sliding window on receive, a never-reused counter on send.

Receive side (as Matter and IPsec): the highest counter seen plus a 64-message bitmap below it; checked
before decryption, committed after. Windows are saved atomically so a restart does not reopen them.
Send side: counters start at a random value in [1, 2^28] (Matter) and are reserved in blocks on disk, so a
crash can skip counters but never reuse one.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from edge_agent.errors import ReplayError
from edge_agent.mesh.files import write_private

WINDOW = 64
RESERVE_BLOCK = 4096


class ReplayGuard:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}  # sender -> (max counter, bitmap of max-1 .. max-64)
        self.dirty = False

    def check(self, sender: str, counter: int) -> None:
        top, bits = self._windows.get(sender, (0, 0))
        if counter > top:
            return
        age = top - counter
        if age == 0 or (age <= WINDOW and bits >> (age - 1) & 1):
            raise ReplayError(f"counter {counter} from {sender} was already received")
        if age > WINDOW:
            raise ReplayError(
                f"counter {counter} from {sender} is older than the replay window (newest {top})"
            )

    def window(self, sender: str) -> tuple[int, int] | None:
        """The (newest counter, bitmap below it) held for ``sender``, if any (diagnostics and tests)."""
        return self._windows.get(sender)

    def forget(self, sender: str) -> None:
        """Drop ``sender``'s window (a session whose keys are gone: nothing on it opens any more)."""
        if self._windows.pop(sender, None) is not None:
            self.dirty = True

    def commit(self, sender: str, counter: int) -> None:
        top, bits = self._windows.get(sender, (0, 0))
        if counter > top:
            shift = counter - top
            # Never shift by an attacker-sized amount: past the window the old bitmap is simply gone.
            bits = (
                ((bits << shift) | (1 << (shift - 1))) & ((1 << WINDOW) - 1) if top and shift <= WINDOW else 0
            )
            self._windows[sender] = (counter, bits)
        else:
            self._windows[sender] = (top, bits | 1 << (top - counter - 1))
        self.dirty = True

    def save(self, path: Path) -> None:
        write_private(path, json.dumps({s: [t, b] for s, (t, b) in self._windows.items()}))
        self.dirty = False

    @classmethod
    def load(cls, path: Path) -> ReplayGuard:
        guard = cls()
        if path.exists():
            guard._windows = {s: (int(t), int(b)) for s, (t, b) in json.loads(path.read_text()).items()}
        return guard


class SendCounter:
    """Monotonic outgoing counter, persisted by reservation so it survives restarts without reuse."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            self._next = int(json.loads(path.read_text())["reserved"])
        else:
            self._next = secrets.randbelow(1 << 28) + 1
        self._reserved = self._next
        self._reserve()

    def _reserve(self) -> None:
        self._reserved = self._next + RESERVE_BLOCK
        write_private(self.path, json.dumps({"reserved": self._reserved}))

    @property
    def upcoming(self) -> int:
        """The value `next` returns next (diagnostics and tests)."""
        return self._next

    def next(self) -> int:
        if self._next >= self._reserved:
            self._reserve()
        value = self._next
        self._next += 1
        return value
