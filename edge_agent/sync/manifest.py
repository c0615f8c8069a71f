"""The signed description of one model pack at one sequence: what to fetch, in which chunks, for whom.

Files are cut into fixed-size chunks (the last chunk of a file may be short; files never share a
chunk, so every chunk lands in one file at a known offset). Every chunk's BLAKE3 digest is listed, and
their Merkle root is signed with them, so a chunk is verified the moment it arrives, from whichever
peer, and a bad one names its sender.
"""

from __future__ import annotations

from typing import Literal, Self

import blake3
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.sync.digests import merkle_root
from edge_agent.sync.limits import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_MANIFEST_BYTES,
    MAX_PACK_BYTES,
    MAX_SEQUENCE,
    MIN_CHUNK,
)
from edge_agent.sync.signing import canonical_json
from edge_agent.tasks import DeviceClass, Task
from edge_agent.validation import is_plain_relative_path

__all__ = ["MANIFEST_TYPE", "NAME_PATTERN", "HealthCheck", "ManifestFile", "Precursor", "UpdateManifest"]

MANIFEST_TYPE = "application/vnd.hearth.model-update+json"
HEX32 = r"^[0-9a-f]{64}$"
MAX_FILES = 64
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,80}$"
"""A model name (sequences count per name): what presence, Home Assistant and file names carry."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestFile(_Model):
    path: str = Field(max_length=200, description="Relative POSIX path inside the pack directory.")
    size: int = Field(ge=0, le=MAX_PACK_BYTES)
    digest: str = Field(pattern=HEX32, description="BLAKE3 of the whole file.")

    @field_validator("path")
    @classmethod
    def _inside_the_pack(cls, v: str) -> str:
        if not is_plain_relative_path(v):
            raise ValueError(f"unsafe pack file path {v!r}")
        return v


class Precursor(_Model):
    """The pack this one replaces, when it is a delta or must follow a given install (SUIT)."""

    sequence: int = Field(ge=1)
    merkle_root: str = Field(pattern=HEX32)


class HealthCheck(_Model):
    """A known inference the new pack must pass before it is activated (else: rolled back)."""

    input: str = Field(min_length=1, max_length=2000)
    expect: str = Field(max_length=8000, description="The output recorded by the publisher.")
    match: Literal["exact", "contains"] = "exact"
    pair: str | None = Field(default=None, pattern=r"^[a-z]{2}-[a-z]{2}$")


class UpdateManifest(_Model):
    type: Literal["model-update"] = "model-update"
    version: Literal[1] = 1
    household_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    name: str = Field(pattern=NAME_PATTERN, description="Model name; sequences count per name.")
    pack_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,80}@[a-z0-9]{2,8}$")
    task: Task
    device_classes: list[DeviceClass] = Field(min_length=1, max_length=8)
    sequence: int = Field(
        ge=1, le=MAX_SEQUENCE, description="Monotonic per model name: lower or equal is a rollback."
    )
    issued_at: AwareDatetime
    """Signed dates carry their zone: a naive one cannot be compared with now (refused at parse)."""
    expires_at: AwareDatetime
    chunk_size: int = Field(ge=MIN_CHUNK, le=MAX_CHUNK)
    total_size: int = Field(ge=0, le=MAX_PACK_BYTES)
    files: list[ManifestFile] = Field(min_length=1, max_length=MAX_FILES)
    chunks: list[str] = Field(max_length=MAX_CHUNKS)
    merkle_root: str = Field(pattern=HEX32)
    precursor: Precursor | None = None
    health: HealthCheck | None = None
    publisher: str = Field(default="", max_length=64)

    @field_validator("chunk_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"chunk size {v} is not a power of two")
        return v

    @field_validator("chunks")
    @classmethod
    def _hex_digests(cls, v: list[str]) -> list[str]:
        if any(len(c) != 64 or c.strip("0123456789abcdef") for c in v):
            raise ValueError("every chunk digest is 64 lowercase hex characters")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file is listed twice")
        if self.total_size != sum(f.size for f in self.files):
            raise ValueError("total_size is not the sum of the file sizes")
        if len(self.chunks) != sum(self._chunks_of(f.size) for f in self.files):
            raise ValueError("the chunk list does not match the file sizes and chunk size")
        if merkle_root([bytes.fromhex(c) for c in self.chunks]).hex() != self.merkle_root:
            raise ValueError("the chunk digests do not hash to the merkle root")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires before it is issued")
        if (size := len(self.canonical())) > MAX_MANIFEST_BYTES:
            raise ValueError(
                f"the manifest is {size} bytes, above the {MAX_MANIFEST_BYTES} one holdings answer carries "
                f"({len(self.chunks)} chunks of {self.chunk_size >> 10} KiB: use larger chunks, up to "
                f"{MAX_CHUNK >> 10} KiB)"
            )
        return self

    def _chunks_of(self, size: int) -> int:
        return -(-size // self.chunk_size)

    def canonical(self) -> bytes:
        return canonical_json(self)

    @property
    def content_id(self) -> str:
        """A short id of exactly this manifest (status lines, announcements)."""
        return blake3.blake3(self.canonical()).hexdigest()[:16]

    def chunk_location(self, index: int) -> tuple[ManifestFile, int, int]:
        """(file, byte offset in it, length) of chunk ``index``."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} of {len(self.chunks)}")
        for f in self.files:
            n = self._chunks_of(f.size)
            if index < n:
                offset = index * self.chunk_size
                return f, offset, min(self.chunk_size, f.size - offset)
            index -= n
        raise AssertionError("unreachable: chunk count checked at validation")

    def chunk_length(self, index: int) -> int:
        return self.chunk_location(index)[2]
