"""The parts' settings values (issue 22): config sections stay at the root and build frozen values that
the router, voice, discovery and HA discovery take, as the mesh takes `MeshSettings`; no part reads the
config module itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.config import AgentConfig, HomeAssistantSection, MeshSection, RoutingSection, VoiceSection
from edge_agent.discovery.settings import AdvertSettings
from edge_agent.ha_discovery.settings import DiscoverySettings
from edge_agent.router_settings import RouterSettings
from edge_agent.voice.settings import VoiceSettings, WyomingLimits

REPO = Path(__file__).resolve().parent.parent
PARTS = ("router.py", "task_specs.py", "voice", "discovery", "ha_discovery/payload.py",
         "ha_discovery/publisher.py", "ha_discovery/settings.py", "router_settings.py", "client")  # fmt: skip


def test_the_routing_section_builds_the_router_settings() -> None:
    section = RoutingSection(mode="offload-first", never_offload=["transcribe"], peer_classes=["hub"])
    settings = section.settings()
    assert settings == RouterSettings(
        mode="offload-first", never_offload=["transcribe"], peer_classes=["hub"]
    )
    assert (settings.ban_s, settings.max_link_drops) == (15.0, 10)  # the limits, at their defaults
    with pytest.raises(ValidationError):
        settings.mode = "auto"  # type: ignore[misc]  # frozen


def test_the_voice_section_builds_the_voice_settings() -> None:
    section = VoiceSection(
        vad_threshold=0.6,
        trusted_transcribers=["oven"],
        wyoming_max_seconds=20,
        wyoming_max_connections=3,
        wyoming_max_per_source=1,
        wyoming_port=10301,
    )
    voice = section.settings()
    assert isinstance(voice, VoiceSettings)
    assert (voice.vad.threshold, voice.trusted_transcribers) == (0.6, frozenset({"oven"}))
    assert voice.wyoming.limits == WyomingLimits(max_seconds=20, max_connections=3, max_per_source=1)
    assert (voice.wyoming.port, voice.wyoming.advertise) == (10301, "auto")
    assert [str(n) for n in voice.wyoming.allow] == ["127.0.0.0/8", "::1/128"]
    assert VoiceSection().settings() == VoiceSettings()  # the section's defaults are the value's


def test_the_mesh_and_home_assistant_sections_build_discovery_settings() -> None:
    mesh = MeshSection(broker="mqtt://127.0.0.1:1884", embedded_broker=True, advertise="on")
    assert mesh.advert_settings() == AdvertSettings(
        mode="on", broker="mqtt://127.0.0.1:1884", loopback_only=True
    )
    ha = HomeAssistantSection(discovery_prefix="ha", heartbeat_s=2)
    assert ha.discovery_settings(5.0) == DiscoverySettings(prefix="ha", interval_s=5.0, heartbeat_s=5.0)
    assert AgentConfig().home_assistant.discovery_settings(5.0).max_pending_clears == 256


def test_no_part_reads_the_config_module() -> None:
    package = REPO / "edge_agent"
    files = [p for name in PARTS for p in ([package / name] if name.endswith(".py") else
                                            sorted((package / name).rglob("*.py")))]  # fmt: skip
    readers = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "edge_agent.config":
                readers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not readers, f"parts take settings values, not config sections: {readers}"
