"""``pack.json``: the manifest that travels with every model pack."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.tasks import Quantization, Task
from edge_agent.validation import is_plain_relative_path

PACK_SCHEMA_VERSION: Literal[1] = 1
MANIFEST_NAME = "pack.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackFile(_Model):
    """One file of the pack, pinned by size and digest."""

    path: str = Field(description="Relative POSIX path inside the pack directory.")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _no_escape(cls, v: str) -> str:
        # A manifest must never point outside its pack (ONNX external-data traversal, CVE-2024-27318).
        if not is_plain_relative_path(v):
            raise ValueError(f"unsafe pack file path {v!r}")
        return v


class Variant(_Model):
    quantization: Quantization
    precision: str = Field(description="Compute precision, e.g. 'int8-accum' or 'fp32'.")
    note: str = ""


class Requirements(_Model):
    """What the runtime must offer to load this pack."""

    runtime: Literal["onnxruntime", "onnxruntime-genai"]
    execution_providers: list[str] = Field(default=["CPUExecutionProvider"])
    isa: list[str] = Field(default_factory=list, description="All of these ISA features are required.")
    opset: int
    contrib_ops: list[str] = Field(default_factory=list, description="com.microsoft ops the graph uses.")


class Provenance(_Model):
    """Where the weights came from, so anyone can rebuild and compare."""

    source_package: str
    source_version: str
    source_file: str
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    builder: str
    tool_versions: dict[str, str] = Field(default_factory=dict)


class PackManifest(_Model):
    schema_version: Literal[1] = PACK_SCHEMA_VERSION
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{1,80}$", description="Model name, e.g. smollm2-135m-instruct."
    )
    task: Task
    variant: Variant
    files: list[PackFile] = Field(min_length=1)
    peak_ram_mb: float = Field(gt=0, description="Measured RSS growth when loaded and run once.")
    requirements: Requirements
    provenance: Provenance
    task_info: dict[str, Any] = Field(
        default_factory=dict, description="Task-specific facts (context, dims)."
    )
    created: datetime

    @property
    def pack_id(self) -> str:
        """Stable, human-readable id: ``<name>@<quantization>``."""
        return f"{self.name}@{self.variant.quantization}"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> PackFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)
