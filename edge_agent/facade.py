"""The one façade type: what a command asks of this device's household, whoever answers it.

Two implementations, the same calls: `edge_agent.hearth.Hearth` (the agent itself, or a one-shot user
of the household when none runs) and `edge_agent.local_api.LocalClient` (the running agent, over its
local socket). `cli.common.open_hearth` yields a `Household`; no command asks which one it holds.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    TranscribeRequest,
    TranscribeResult,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.mesh.protocol import Health
from edge_agent.supervision import HealthReport, Supervisor
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager
    from edge_agent.mesh.corrections import Correction
    from edge_agent.mesh.protocol import UpdateStatus

__all__ = ["AgentHousehold", "AnswerStream", "Household", "PeerReport", "PeersReport", "PullOutcome"]


class PeerReport(BaseModel):
    name: str
    device_id: str
    profile: str
    device_class: str
    rtt_ms: float | None
    queue_depth: int
    free_model_ram_mb: int
    seen_s_ago: float
    offers: list[dict[str, Any]]
    health: Health | None = None
    """Restarts and drops the peer reports for its own loops (None: it does not say)."""
    path: str = "broker"
    """Where a request to it would go now: "coap" (OSCORE over UDP), "direct" (a TLS link is up or its
    contact may be tried) or "broker" (the transport: MQTT, or a sealed CoAP frame)."""
    coap: str | None = None
    """Where it answers CoAP (``host:port`` from its signed presence); None: MQTT only."""
    envelope: int = 1
    """2: messages to it travel on forward-secret sessions; 1: the v1 envelope (it does not speak v2)."""


class PeersReport(BaseModel):
    household: str
    peers: list[PeerReport]
    routes: dict[str, dict[str, Any]]
    dropped: dict[str, int]
    """Frames this device's mesh node refused, by reason (forged, replayed, stale, ...)."""
    health: HealthReport = Field(default_factory=HealthReport)
    """This agent's own loops: state, restarts after unexpected errors, items dropped."""


class AnswerStream(Protocol):
    """A generate answer: iterate for its chunks; afterwards it says who served it and why there."""

    def __aiter__(self) -> AsyncGenerator[GenerateChunk, None]: ...

    @property
    def reason(self) -> str: ...

    @property
    def lines(self) -> list[str]: ...

    @property
    def served_by(self) -> str: ...

    @property
    def hops(self) -> str: ...

    @property
    def failovers(self) -> int: ...

    @property
    def stats(self) -> GenerateStats | None: ...


class PullOutcome(Protocol):
    """How one model's update round ended (`updates.UpdateOutcome`, or its copy from the socket)."""

    @property
    def pack_id(self) -> str: ...

    @property
    def sequence(self) -> int: ...

    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...


class Household(Protocol):
    """This device's way to the household: every task, routed wherever it runs best."""

    def generate(self, request: GenerateRequest) -> AnswerStream:
        """Stream an answer from wherever it is expected to finish first (failing over mid-answer)."""
        ...

    async def embed(self, request: EmbedRequest) -> tuple[EmbedResult, str]:
        """The vectors and who computed them."""
        ...

    async def translate(self, request: TranslateRequest) -> tuple[TranslateResult, str]: ...

    async def transcribe(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """One window of speech, transcribed here or by a peer (policy permitting)."""
        ...

    async def transcribe_command(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """A window of speech that becomes a command: where this process routes, only devices trusted
        to transcribe commands are asked; through a running agent, it routes as for any window and the
        caller checks the transcript's origin afterwards (`edge_agent.voice.trust`)."""
        ...

    @property
    def models(self) -> ModelManager:
        """The engines this process runs itself (the VAD: it decides what may leave the device)."""
        ...

    async def wait_for_peers(self, task: Task, timeout: float) -> None:
        """Give the household up to ``timeout`` seconds to offer ``task`` before the next call."""
        ...

    async def peers(self, wait_s: float | None = None) -> PeersReport:
        """Live peers and where each task would run from here; with ``wait_s``, listen that long for
        presence adverts first (and measure the round trip to generate's candidates)."""
        ...

    async def pull_updates(
        self,
        models: set[str] | None = None,
        on_progress: Callable[[list[UpdateStatus]], None] | None = None,
        wait_s: float = 3.0,
    ) -> Sequence[PullOutcome]:
        """Ask the household for newer packs now, fetch and activate them."""
        ...

    async def correct(self, pair: str, source: str, target: str, model: str = "") -> Correction: ...

    async def withdraw_correction(self, record_id: str, *, here: bool = False) -> Correction: ...

    async def corrections(self) -> list[Correction]: ...


class AgentHousehold(Household, Protocol):
    """The agent itself, as its local socket serves it (`Hearth`): also its view right now, and the
    supervisor that counts a call failing on a bug."""

    @property
    def supervisor(self) -> Supervisor: ...

    def peers_report(self) -> PeersReport:
        """Live peers and where each task would run from here right now."""
        ...
