"""What every fuzz target provides to the driver: a system to attack, one input at a time, and the
invariants to hold after each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from hypothesis import strategies as st

__all__ = ["Target"]


class Target(ABC):
    """One input path of peer data. The driver opens it once per session (and again after a failure),
    then for every example: `feed` (draws the input through ``data`` and delivers it, raising
    `rig.Broken` if a target-specific rule fails), `check` (the invariants), and every few inputs
    `probe` (the system still serves)."""

    name: ClassVar[str]
    about: ClassVar[str]

    @abstractmethod
    async def open(self, tmp: Path) -> None:
        """Bring the system up in ``tmp`` (a fresh directory)."""

    @abstractmethod
    async def close(self) -> None:
        """Tear it down."""

    @abstractmethod
    async def feed(self, data: st.DataObject) -> None:
        """Draw one input and deliver it; return once the system has taken it in."""

    @abstractmethod
    def check(self) -> None:
        """The invariants after one input; raises `rig.Broken`."""

    @abstractmethod
    async def probe(self) -> None:
        """The system still does its job for an honest client; raises `rig.Broken`."""
