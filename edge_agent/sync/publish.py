"""Describe a pack directory as a signed update manifest (the publisher's side)."""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from nacl.signing import SigningKey
from pydantic import ValidationError

from edge_agent.errors import MalformedUpdateError
from edge_agent.sync.describe import DEFAULT_CHUNK_SIZE, describe
from edge_agent.sync.digests import merkle_root
from edge_agent.sync.manifest import MANIFEST_TYPE, HealthCheck, UpdateManifest
from edge_agent.sync.signing import seal
from edge_agent.tasks import DeviceClass, Task

__all__ = ["build_manifest", "sign_manifest"]


def _open_inside(pack_dir: Path, rel: str) -> BinaryIO:
    """A pack file opened for reading: a regular file, not a symlink, inside ``pack_dir``."""
    path = pack_dir / rel
    if path.resolve() != pack_dir.resolve() / rel:  # a symlink or ".." somewhere on the way
        raise MalformedUpdateError(f"{rel}: not a plain path inside the pack directory {pack_dir}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise MalformedUpdateError(f"{path}: cannot publish it ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MalformedUpdateError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def build_manifest(
    pack_dir: Path,
    files: list[str],
    *,
    household_id: str,
    name: str,
    pack_id: str,
    task: Task,
    sequence: int,
    device_classes: list[DeviceClass],
    issued_at: datetime,
    expires_at: datetime,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    publisher: str = "",
    health: HealthCheck | None = None,
) -> UpdateManifest:
    """Hash every file of the pack (in the order given) into a manifest.

    Raises MalformedUpdateError naming the first rule it breaks (a chunk size off the wire's limits, a
    pack too large for one manifest): a manifest is made only if every receiver can take it."""
    with ExitStack() as stack:
        streams = [(rel, stack.enter_context(_open_inside(pack_dir, rel))) for rel in files]
        described, chunks = describe(streams, chunk_size)
    try:
        return UpdateManifest(
            household_id=household_id,
            name=name,
            pack_id=pack_id,
            task=task,
            device_classes=device_classes,
            sequence=sequence,
            issued_at=issued_at,
            expires_at=expires_at,
            chunk_size=chunk_size,
            total_size=sum(f.size for f in described),
            files=described,
            chunks=chunks,
            merkle_root=merkle_root([bytes.fromhex(c) for c in chunks]).hex(),
            health=health,
            publisher=publisher,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "manifest"
        raise MalformedUpdateError(f"cannot publish {pack_id}: {where}: {err['msg']}") from None


def sign_manifest(manifest: UpdateManifest, *keys: SigningKey) -> bytes:
    """The manifest envelope, signed by ``keys`` (more holders can add theirs: `add_signature`)."""
    return seal(MANIFEST_TYPE, manifest.canonical(), keys)
