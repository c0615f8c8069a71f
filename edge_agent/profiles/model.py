"""Pydantic schema of a firmware profile (``firmware_profiles/*.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.tasks import DeviceClass, Quantization, Task

Arch = Literal["arm64", "armv7", "x86_64"]
Power = Literal["mains", "battery", "vehicle"]

KNOWN_ISA = {
    # arm
    "neon",
    "dotprod",
    "i8mm",
    "fp16",
    "bf16",
    "sve",
    "sve2",
    # x86
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
}
"""ISA features a pack may require; other flags in a profile are rejected as likely typos."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cpu(_Strict):
    arch: Arch
    model: str = Field(description="Marketing name, e.g. 'Cortex-A53' or 'Intel N100'.")
    cores: int = Field(ge=1, le=512)
    clock_ghz: float = Field(gt=0, le=10)
    isa: list[str] = Field(default_factory=list, description="ISA features relevant to kernels.")

    @model_validator(mode="after")
    def _known_isa(self) -> Cpu:
        unknown = sorted(set(self.isa) - KNOWN_ISA)
        if unknown:
            raise ValueError(f"unknown ISA feature(s) {unknown}; known: {sorted(KNOWN_ISA)}")
        return self


class Accelerator(_Strict):
    kind: Literal["gpu", "npu", "dsp"]
    name: str
    memory_mb: int = Field(ge=0, description="Dedicated memory; 0 when it shares system RAM.")
    execution_providers: list[str] = Field(description="onnxruntime EPs that drive it.")


class Storage(_Strict):
    kind: Literal["emmc", "ufs", "ssd", "nvme", "sd"]
    size_gb: int = Field(ge=1)


class FirmwareProfile(_Strict):
    """A device class: its hardware and what the agent may do with it."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    display_name: str
    device_class: DeviceClass
    cpu: Cpu
    ram_mb: int = Field(ge=64)
    storage: Storage
    accelerators: list[Accelerator] = Field(default_factory=list)
    execution_providers: list[str] = Field(
        default=["CPUExecutionProvider"],
        description="onnxruntime EPs the agent may use here, in preference order.",
    )
    power: Power
    model_ram_share: float = Field(
        gt=0, le=0.9, description="Share of RAM the agent may fill with loaded models (weights + caches)."
    )
    threads: int = Field(ge=1, le=512, description="Intra-op threads for inference.")
    quantizations: list[Quantization] = Field(
        min_length=1, description="Weight formats allowed here, most preferred first."
    )
    serves: list[Task] = Field(default_factory=list, description="Tasks this device may serve for peers.")
    task_ram_mb: dict[Task, int] = Field(
        default_factory=dict,
        description="Most peak RAM one task's pack may take here (MiB), within the model budget: what must "
        "stay resident beside the others (ASR next to the UI's own speech prompts, say).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FirmwareProfile:
        if "CPUExecutionProvider" not in self.execution_providers:
            raise ValueError("execution_providers must include CPUExecutionProvider (the fallback)")
        if self.threads > self.cpu.cores:
            raise ValueError(f"threads ({self.threads}) exceeds cpu.cores ({self.cpu.cores})")
        if len(set(self.quantizations)) != len(self.quantizations):
            raise ValueError("quantizations lists a format twice")
        over = {t: mb for t, mb in self.task_ram_mb.items() if not 0 < mb <= self.model_ram_budget_mb}
        if over:
            raise ValueError(
                f"task_ram_mb {over} must be positive and within the model budget "
                f"({self.model_ram_budget_mb} MB = model_ram_share x ram_mb)"
            )
        return self

    @property
    def model_ram_budget_mb(self) -> int:
        """RAM the agent may use for loaded models, in MiB."""
        return int(self.ram_mb * self.model_ram_share)
