"""Reading the host's hardware and matching it to the nearest shipped profile."""

from __future__ import annotations

import math
import os
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edge_agent.profiles.model import KNOWN_ISA, Accelerator, Cpu, FirmwareProfile, Storage

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armv7"}
# /proc/cpuinfo spells some features differently from the profile vocabulary.
_FLAG_ALIASES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16", "sse4_2": "sse4_2", "i8mm": "i8mm"}


@dataclass(frozen=True)
class HostFacts:
    """What ``detect`` could read about this machine."""

    arch: str
    cpu_model: str
    cores: int
    clock_ghz: float
    ram_mb: int
    isa: frozenset[str]
    gpus: list[str] = field(default_factory=list)
    on_battery: bool = False


def cpuinfo() -> dict[str, str]:
    """``/proc/cpuinfo`` as key → value of each key's first line (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _isa_flags(info: dict[str, str]) -> frozenset[str]:
    raw = (info.get("flags") or info.get("Features") or "").split()
    mapped = {_FLAG_ALIASES.get(f, f) for f in raw}
    if platform.machine() in {"aarch64", "arm64"}:
        mapped.add("neon")  # mandatory on ARMv8-A
    return frozenset(mapped & KNOWN_ISA)


def _nvidia_gpus() -> list[str]:
    gpus = []
    root = Path("/proc/driver/nvidia/gpus")
    if root.is_dir():
        for gpu in sorted(root.iterdir()):
            info = (gpu / "information").read_text(errors="replace") if (gpu / "information").exists() else ""
            model = next(
                (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Model")), ""
            )
            gpus.append(model or "NVIDIA GPU")
    return gpus


def detect_host() -> HostFacts:
    """Read cores, RAM, ISA flags, GPUs and power source from the running host."""
    info = cpuinfo()
    freq = psutil.cpu_freq()
    mhz = (freq.max or freq.current) if freq else float(info.get("cpu MHz", "0") or 0)
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    return HostFacts(
        arch=_ARCH.get(platform.machine().lower(), platform.machine().lower()),
        cpu_model=info.get("model name") or info.get("Hardware") or platform.processor() or "unknown",
        cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        clock_ghz=round(mhz / 1000, 2) if mhz else 1.0,
        ram_mb=psutil.virtual_memory().total // (1024 * 1024),
        isa=_isa_flags(info),
        gpus=_nvidia_gpus(),
        on_battery=bool(battery and not battery.power_plugged),
    )


def _distance(host: HostFacts, profile: FirmwareProfile) -> float:
    """Smaller is closer. Arch mismatch dominates; then RAM, cores, ISA, accelerators (log scales)."""
    d = 0.0 if profile.cpu.arch == host.arch else 10.0
    d += abs(math.log2(max(host.ram_mb, 1) / profile.ram_mb))
    d += 0.5 * abs(math.log2(max(host.cores, 1) / profile.cpu.cores))
    union = host.isa | set(profile.cpu.isa)
    d += (1 - len(host.isa & set(profile.cpu.isa)) / len(union)) if union else 0.0
    has_gpu = any(a.kind == "gpu" and a.memory_mb > 0 for a in profile.accelerators)
    d += 0.0 if has_gpu == bool(host.gpus) else 2.0
    return d


def nearest_profile(host: HostFacts, profiles: list[FirmwareProfile]) -> FirmwareProfile:
    """The shipped profile whose hardware is closest to the host."""
    if not profiles:
        raise ValueError("no profiles to compare against")
    return min(profiles, key=lambda p: _distance(host, p))


def profile_for_host(host: HostFacts, template: FirmwareProfile) -> FirmwareProfile:
    """A profile describing this host, with the agent policy (RAM share, quantizations) of ``template``."""
    hostname = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower()).strip("-") or "local"
    threads = max(1, min(host.cores, template.threads if host.cores >= template.threads else host.cores))
    accelerators = [
        Accelerator(kind="gpu", name=g, memory_mb=0, execution_providers=["CUDAExecutionProvider"])
        for g in host.gpus
    ]
    eps = (["CUDAExecutionProvider"] if host.gpus else []) + ["CPUExecutionProvider"]
    return FirmwareProfile(
        id=f"host-{hostname}"[:63],
        display_name=f"This host ({host.cpu_model})",
        device_class=template.device_class,
        cpu=Cpu(
            arch=host.arch if host.arch in {"arm64", "armv7", "x86_64"} else "x86_64",  # type: ignore[arg-type]
            model=host.cpu_model,
            cores=host.cores,
            clock_ghz=host.clock_ghz,
            isa=sorted(host.isa),
        ),
        ram_mb=host.ram_mb,
        storage=Storage(kind="ssd", size_gb=max(1, psutil.disk_usage("/").total // 1024**3)),
        accelerators=accelerators,
        execution_providers=eps,
        power="battery" if host.on_battery else template.power,
        model_ram_share=template.model_ram_share,
        threads=threads,
        quantizations=list(template.quantizations),
        serves=list(template.serves),
    )
