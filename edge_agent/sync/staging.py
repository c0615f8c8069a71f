"""Where a fetch puts a pack while its chunks arrive: every file at its signed size (sparse), each chunk
written at its offset, verified chunks found again after a restart, room checked before staging, and
stale stagings pruned. Files only: what is verified, and when, is the exchange's (`sync.exchange`)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Container
from pathlib import Path

from edge_agent.errors import UpdateError
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.trust import TrustedUpdates

__all__ = [
    "DISK_MARGIN_BYTES",
    "STAGING_MAX_AGE_S",
    "no_room",
    "prepare_staging",
    "read_chunk",
    "stale_stagings",
    "verified_chunks",
    "write_chunk",
]

DISK_MARGIN_BYTES = 64 << 20
"""Disk left free for everything else on the device when a pack is staged."""
STAGING_MAX_AGE_S = 7 * 86400
"""A staging untouched this long is pruned (a fetch that gave up resumes from it until then)."""


def read_chunk(directory: Path, manifest: UpdateManifest, index: int) -> bytes:
    file, offset, length = manifest.chunk_location(index)
    with (directory / file.path).open("rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def verified_chunks(directory: Path, manifest: UpdateManifest) -> set[int]:
    """Chunks already on disk that match the manifest: where a restarted fetch resumes from."""
    good: set[int] = set()
    for index in range(len(manifest.chunks)):
        try:
            TrustedUpdates.verify_chunk(manifest, index, read_chunk(directory, manifest, index))
        except (OSError, UpdateError):
            continue
        good.add(index)
    return good


def write_chunk(directory: Path, manifest: UpdateManifest, index: int, data: bytes) -> None:
    file, offset, _ = manifest.chunk_location(index)
    fd = os.open(directory / file.path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def prepare_staging(directory: Path, manifest: UpdateManifest) -> None:
    """Every file of the pack at its signed size (sparse), so chunks land at their offsets."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for f in manifest.files:
        path = directory / f.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size != f.size:
                os.ftruncate(fd, f.size)
        finally:
            os.close(fd)


def no_room(
    manifest: UpdateManifest, staging: Path, staging_root: Path, quota_bytes: int | None
) -> str | None:
    """Why this pack may not be staged here, if it may not: over the quota, or the disk would fill
    (staging plus the store's copy, plus a margin for everything else on the device)."""
    if quota_bytes is not None and manifest.total_size > quota_bytes:
        size, quota = manifest.total_size / 1e6, quota_bytes / 1e6
        return f"{manifest.pack_id} is {size:.1f} MB; the update quota here is {quota:.1f} MB"
    staging_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = (
        sum(p.stat().st_blocks * 512 for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0
    )
    need = 2 * manifest.total_size - staged + DISK_MARGIN_BYTES
    free = shutil.disk_usage(staging_root).free
    if need > free:
        return f"not enough disk for {manifest.pack_id}: needs {need / 1e6:.0f} MB, {free / 1e6:.0f} MB free"
    return None


def stale_stagings(staging_root: Path, busy: Container[str], max_age_s: float) -> list[Path]:
    """Stagings under ``staging_root`` untouched for ``max_age_s``, removed; those named in ``busy``
    (fetches in progress) are left alone. Returns the directories removed."""
    if not staging_root.is_dir():
        return []
    now, gone = time.time(), []
    for entry in staging_root.iterdir():
        if entry.name in busy or not entry.is_dir():
            continue
        newest = max((p.stat().st_mtime for p in entry.rglob("*")), default=entry.stat().st_mtime)
        if now - newest > max_age_s:
            shutil.rmtree(entry, ignore_errors=True)
            gone.append(entry)
    return gone
