"""Voice settings: what the voice parts take from the agent's ``[voice]`` section, as frozen values.

Built once at the root from the section (`VoiceSection.settings`), as the mesh takes `MeshSettings`: the
VAD, the command-transcription trust, the pipeline and the Wyoming server never read configuration.
Every limit a Wyoming client (anyone the allow-list lets in; Wyoming has no authentication) can push
against is in `WyomingLimits`. Pydantic only, so the config module (below the voice parts) builds it.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork

__all__ = [
    "LOOPBACK",
    "ActionsMode",
    "VadSettings",
    "VoiceSettings",
    "WyomingAdvertiseMode",
    "WyomingLimits",
    "WyomingSettings",
]

ActionsMode = Literal["local", "trusted", "any"]
WyomingAdvertiseMode = Literal["auto", "on", "off"]
LOOPBACK: tuple[IPv4Network | IPv6Network, ...] = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VadSettings(_Value):
    """Silero's speech detection on this device ([voice] vad_threshold, min_speech_ms, ...)."""

    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_speech_ms: int = Field(default=250, ge=0, le=10_000)
    min_silence_ms: int = Field(default=100, ge=0, le=10_000)
    speech_pad_ms: int = Field(default=30, ge=0, le=2_000)


class WyomingLimits(_Value):
    """What one Wyoming client can make this device hold or wait for."""

    max_seconds: float = Field(default=30.0, gt=0, le=4 * 3600)
    """Longest utterance one connection may send (a bounded buffer: one voice command, not a file)."""
    max_connections: int = Field(default=4, ge=1, le=64)
    """Connections served at once, from everyone together."""
    max_per_source: int = Field(default=2, ge=1, le=64)
    """Connections one client address may hold at once."""
    idle_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    """Longest wait for a client's next event (a live microphone sends a chunk every few tens of ms)."""
    hold_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest a connection may stay open before its audio starts, whatever it sends meanwhile."""
    max_ignored_events: int = Field(default=16, ge=0, le=4096)
    """Unknown events dropped per connection before it counts as abuse and is closed."""
    drain_s: float = Field(default=30.0, ge=0, le=3600)
    """After refusing an utterance, how long its remaining audio is read (and dropped) until audio-stop."""
    refusal_log_hosts: int = Field(default=256, ge=1, le=65536)
    """Refused addresses remembered (each logged once a minute); past it the memory starts afresh."""


class WyomingSettings(_Value):
    """Where the Wyoming server listens, whom it answers, and its limits ([voice] wyoming_*)."""

    host: str = "127.0.0.1"
    port: int = Field(default=10300, ge=0, le=65535)
    advertise: WyomingAdvertiseMode = "auto"
    """Zeroconf ``_wyoming._tcp``: "auto" advertises when bound beyond loopback."""
    allow: tuple[IPvAnyNetwork, ...] = Field(default=LOOPBACK, min_length=1, max_length=64)
    """Client addresses (or networks) answered; others are refused at once."""
    limits: WyomingLimits = Field(default_factory=WyomingLimits)


class VoiceSettings(_Value):
    """The voice parts' view of [voice]: the pipeline's language and recording bound, the VAD, who may
    transcribe commands, and the Wyoming server."""

    language: str = Field(default="en", pattern=r"^[a-z]{2,3}$")
    max_seconds: float = Field(default=600.0, gt=0, le=4 * 3600)
    """Longest recording `hearth listen` or the pipeline accepts."""
    vad: VadSettings = Field(default_factory=VadSettings)
    actions_transcribe: ActionsMode = "trusted"
    trusted_transcribers: frozenset[str] = frozenset()
    """Device ids (32 hex) and certified names trusted to transcribe commands."""
    wyoming: WyomingSettings = Field(default_factory=WyomingSettings)
