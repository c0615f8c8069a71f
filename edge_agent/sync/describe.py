"""Cut files into chunks and hash them: the data half of a manifest (streams in, digests out)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

import blake3

from edge_agent.sync.digests import chunk_digest
from edge_agent.sync.manifest import ManifestFile

__all__ = ["DEFAULT_CHUNK_SIZE", "describe"]

DEFAULT_CHUNK_SIZE = 256 << 10
"""256 KiB: 400 digests (26 KB of manifest) for a 100 MB pack, and small enough to spread a pack over
several peers; BitTorrent's v2 pieces for files this size are 256 KiB to 1 MiB."""


def describe(
    files: Iterable[tuple[str, BinaryIO]], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[list[ManifestFile], list[str]]:
    """Each file's size and whole-file digest, and every chunk's digest in manifest order."""
    described: list[ManifestFile] = []
    chunks: list[str] = []
    for path, stream in files:
        whole = blake3.blake3()
        size = 0
        while block := stream.read(chunk_size):
            whole.update(block)
            size += len(block)
            chunks.append(chunk_digest(block).hex())
        described.append(ManifestFile(path=path, size=size, digest=whole.hexdigest()))
    return described, chunks
