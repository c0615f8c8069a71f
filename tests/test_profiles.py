from __future__ import annotations

import platform
from pathlib import Path

import pytest

from edge_agent.errors import ProfileError
from edge_agent.profiles import detect_host, list_profiles, load_profile, nearest_profile, profile_for_host

REQUIRED = {"fridge-panel", "car-headunit", "hub", "phone", "laptop", "gpu-server"}


def test_shipped_profiles_validate_and_cover_the_device_range() -> None:
    profiles = {p.id: p for p in list_profiles()}
    assert set(profiles) >= REQUIRED
    fridge, gpu = profiles["fridge-panel"], profiles["gpu-server"]
    assert fridge.ram_mb == 1024 and fridge.cpu.cores == 4 and fridge.cpu.arch == "arm64"
    assert profiles["car-headunit"].ram_mb == 4096 and profiles["car-headunit"].cpu.cores == 8
    assert "avx2" in profiles["hub"].cpu.isa and profiles["hub"].ram_mb == 8192
    assert gpu.accelerators[0].memory_mb == 81920 and "CUDAExecutionProvider" in gpu.execution_providers
    assert fridge.model_ram_budget_mb < profiles["hub"].model_ram_budget_mb < gpu.model_ram_budget_mb


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown firmware profile 'toaster' \(known: .*fridge-panel"):
        load_profile("toaster")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"ram_mb": "lots"}, r"ram_mb: Input should be a valid integer"),
        ({"threads": 64}, r"threads \(64\) exceeds cpu.cores \(4\)"),
        (
            {"cpu": {"arch": "arm64", "model": "x", "cores": 4, "clock_ghz": 1.5, "isa": ["neno"]}},
            r"cpu: unknown ISA feature\(s\) \['neno'\]",
        ),
        ({"quantizations": ["int3"]}, r"quantizations\[0\]: Input should be"),
        ({"surprise": 1}, r"surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_profile_names_file_field_and_reason(tmp_path: Path, patch: dict, expected: str) -> None:  # type: ignore[type-arg]
    import yaml

    data = load_profile("fridge-panel").model_dump()
    data.update(patch)
    path = tmp_path / "fridge-panel.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=rf"{path}: .*{expected}"):
        list_profiles(tmp_path)


def test_detect_reads_this_host_and_generates_a_valid_profile() -> None:
    import os

    host = detect_host()
    assert host.cores >= 1 and host.cores <= (os.cpu_count() or 1)
    assert host.ram_mb > 256
    assert host.arch == {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine(), host.arch)
    if host.arch == "x86_64":
        flags = Path("/proc/cpuinfo").read_text()
        assert ("avx2" in host.isa) == (" avx2" in flags)
    nearest = nearest_profile(host, list_profiles())
    generated = profile_for_host(host, nearest)
    assert generated.ram_mb == host.ram_mb and generated.cpu.cores == host.cores
    assert generated.quantizations == nearest.quantizations


def test_nearest_profile_prefers_matching_arch_and_ram() -> None:
    from edge_agent.profiles import HostFacts

    pi_like = HostFacts("arm64", "Cortex-A53", 4, 1.4, 1000, frozenset({"neon"}))
    assert nearest_profile(pi_like, list_profiles()).id == "fridge-panel"
    n100 = HostFacts("x86_64", "N100", 4, 3.4, 8000, frozenset({"avx2", "fma", "avx_vnni"}))
    assert nearest_profile(n100, list_profiles()).id == "hub"
    gpu = HostFacts("x86_64", "EPYC", 32, 3.7, 250000, frozenset({"avx512f", "avx2"}), gpus=["H100"])
    assert nearest_profile(gpu, list_profiles()).id == "gpu-server"
