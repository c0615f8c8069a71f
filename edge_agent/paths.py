"""Where Hearth keeps its state on disk."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def hearth_home() -> Path:
    """Root of the agent's state: ``$HEARTH_HOME`` or the platform's user data dir."""
    env = os.environ.get("HEARTH_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("hearth", appauthor=False))


def profiles_dir() -> Path:
    """Directory of the shipped firmware profiles (repo checkout or installed wheel)."""
    env = os.environ.get("HEARTH_PROFILES_DIR")
    if env:
        return Path(env).expanduser()
    packaged = Path(__file__).parent / "_data" / "firmware_profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "firmware_profiles"
