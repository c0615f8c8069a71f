"""The agent's façade: what `Hearth` answers (the `edge_agent.facade.Household` calls), over the parts
the composition root (`edge_agent.hearth`) built and owns: the router, the engines, the mesh service.

Kept apart from the root so each reads alone: the root builds and closes parts, the façade only routes
calls through them. It never builds a part the root owns (the Home Assistant bridge and the voice
pipeline, opened on first use, are the façade's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from edge_agent.agent import Agent
from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    TranscribeRequest,
    TranscribeResult,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.config import AgentConfig
from edge_agent.errors import HearthError
from edge_agent.facade import PeerReport, PeersReport
from edge_agent.router import RoutedStream, Router
from edge_agent.supervision import Supervisor
from edge_agent.tasks import Task

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager
    from edge_agent.ha_bridge import BridgeReply, HomeAssistantBridge
    from edge_agent.mesh.corrections import Correction
    from edge_agent.mesh.features.corrections import CorrectionSync
    from edge_agent.service import MeshService
    from edge_agent.voice.pipeline import VoicePipeline
    from edge_agent.voice.transcript import TranscriptPiece
    from edge_agent.voice.trust import ActionTranscriber

__all__ = ["AgentFacade", "HearthState"]


class HearthState(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


class AgentFacade:
    """The façade half of `Hearth`; the root sets the parts below as it opens."""

    config: AgentConfig
    agent: Agent
    supervisor: Supervisor
    router: Router
    """The agent's one router (built by the root: local engines, and peers when on the mesh)."""
    service: MeshService | None
    """The mesh side, when this device is a paired member on the mesh."""
    state: HearthState
    _stack: contextlib.AsyncExitStack

    def __init__(self) -> None:
        self._voice: VoicePipeline | None = None
        self._for_commands: ActionTranscriber | None = None
        self._ha_bridge: HomeAssistantBridge | None = None  # opened on first use, kept for the agent's life
        self._ha_opening = asyncio.Lock()

    async def wait_for_peers(self, task: Task, timeout: float) -> None:
        if self.service is not None:
            await self.service.wait_for_peers(task, timeout)

    def _runs_here(self, task: Task, pair: str | None = None) -> None:
        """Without the mesh, a task the plan cannot run here is this device's limit, said plainly."""
        if self.service is None:
            self.agent.models.require_local(task, pair)

    def generate(self, request: GenerateRequest, deadline_s: float | None = None) -> RoutedStream:
        """Stream an answer from wherever it is expected to finish first (failing over mid-answer)."""
        self._runs_here("generate")
        return self.router.generate(request, deadline_s)

    async def embed(self, request: EmbedRequest) -> tuple[EmbedResult, str]:
        self._runs_here("embed")
        return await self.router.embed(request)

    async def translate(self, request: TranslateRequest) -> tuple[TranslateResult, str]:
        if self.service is not None:
            return await self.service.translate(request)
        return await self.router.translate(request)

    # -- voice ------------------------------------------------------------------------------------------

    async def transcribe(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """One window of speech, transcribed here or by a peer (policy permitting); (result, served by)."""
        self._runs_here("transcribe")
        from edge_agent.task_specs import TRANSCRIBE

        return await self.router.call(TRANSCRIBE, request)

    @property
    def voice(self) -> VoicePipeline:
        """The speech pipeline on this device's own VAD for the Wyoming server: Assist acts on what it
        hears, so its windows go only to devices trusted to transcribe commands (edge_agent.voice.trust)."""
        if self._voice is None:
            from edge_agent.voice.local_vad import ManagedVad
            from edge_agent.voice.pipeline import VoicePipeline

            vad = ManagedVad(self.agent.models, self.config.voice.settings().vad)
            self._voice = VoicePipeline(vad.find_speech, self.transcribe_command, self.config.voice.language,
                                        self.config.voice.max_seconds)  # fmt: skip
        return self._voice

    async def transcribe_command(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        """A window of speech that becomes a command: only devices trusted to transcribe commands are
        asked ([voice] actions_transcribe; edge_agent.voice.trust)."""
        if self._for_commands is None:
            from edge_agent.voice.trust import ActionTranscriber, ActionTrust

            trust = ActionTrust.for_voice(self.config.voice.settings())
            self._for_commands = ActionTranscriber(trust, lambda: self.router, self.transcribe)
        return await self._for_commands(request)

    @property
    def models(self) -> ModelManager:
        """The engines this process runs (the agent's)."""
        return self.agent.models

    def transcribe_pcm(self, pcm: bytes, *, language: str = "en") -> AsyncIterator[TranscriptPiece]:
        """A whole recording (16 kHz mono s16le): VAD here, then each speech window wherever it runs
        best; pieces in order as they finish (``Transcriber`` for the Wyoming server)."""
        return self.voice.transcribe_pcm(pcm, language=language)

    # -- Home Assistant --------------------------------------------------------------------------------

    async def ask_home_assistant(self, text: str, conversation_id: str | None = None) -> BridgeReply:
        """Hand a command (typed, or heard by the voice pipeline) to Home Assistant's Assist and return
        its answer ([home_assistant]; needs the `ha` extra). The bridge opens on first use and stays
        open, one HTTP session, until the agent closes; a failed open is retried on the next call."""
        if self.state is not HearthState.RUNNING:
            raise RuntimeError(f"this Hearth is {self.state.value}, not running")
        async with self._ha_opening:
            if self._ha_bridge is None:
                from edge_agent.ha_bridge import HomeAssistantBridge

                bridge = HomeAssistantBridge(self.config.home_assistant)
                self._ha_bridge = await self._stack.enter_async_context(bridge)
        return await self._ha_bridge.converse(text, conversation_id)

    # -- shared corrections ----------------------------------------------------------------------------

    def _corrections_here(self) -> CorrectionSync:
        if self.service is None:
            raise HearthError(
                "corrections are shared by the household: this device is not on a household mesh "
                "(pair it first: hearth pair)"
            )
        return self.service.correction_sync

    async def correct(self, pair: str, source: str, target: str, model: str = "") -> Correction:
        """Record the user's translation of ``source`` and share it: every device of the household
        then answers that sentence with it, before any model or cache."""
        return await self._corrections_here().correct(pair, source, target, model)

    async def withdraw_correction(self, record_id: str, *, here: bool = False) -> Correction:
        """Take a correction back for the household (the withdrawal), or with ``here`` only stop using
        it for this device's own translations (the declined correction)."""
        sync = self._corrections_here()
        return sync.decline(record_id) if here else await sync.withdraw(record_id)

    async def corrections(self) -> list[Correction]:
        """Every correction and withdrawal held here, oldest first."""
        held = self._corrections_here().corrections.records.values()
        return sorted(held, key=lambda r: r.created)

    async def peers(self, wait_s: float | None = None) -> PeersReport:
        """Live peers and where each task would run from here; with ``wait_s``, listen that long for
        presence adverts first (a one-shot process hears the household anew) and measure the round trip
        to generate's candidates."""
        if wait_s is not None:
            await asyncio.sleep(wait_s)
            await self.wait_for_peers("generate", timeout=0)
        return self.peers_report()

    def peers_report(self) -> PeersReport:
        """Live peers and where each task would run from here right now."""
        now = time.monotonic()
        endpoint = self.service.endpoint if self.service is not None else None
        rows = endpoint.peers.all() if endpoint is not None else []
        decisions = {
            "generate": self.router.decide(
                "generate", GenerateRequest.from_prompt("x", max_tokens=self.config.generate.max_tokens)
            ),
            "embed": self.router.decide("embed", EmbedRequest(texts=["x"])),
        }
        return PeersReport(
            household=self.service.membership.household_id if self.service is not None else "",
            peers=[
                PeerReport(
                    name=p.name,
                    device_id=p.device_id,
                    profile=p.presence.profile,
                    device_class=p.device_class,
                    rtt_ms=p.rtt_ms,
                    queue_depth=p.presence.queue_depth,
                    free_model_ram_mb=p.presence.free_model_ram_mb,
                    seen_s_ago=round(now - p.seen, 3),
                    offers=[o.model_dump() for o in p.presence.offers],
                    health=p.presence.health,
                    path=endpoint.path_to(p.device_id) if endpoint is not None else "broker",
                    envelope=endpoint.envelope_to(p.device_id) if endpoint is not None else 1,
                    coap=(
                        f"{p.presence.coap.hosts[0]}:{p.presence.coap.port}"
                        if p.presence.coap is not None
                        else None
                    ),
                )
                for p in rows
            ],
            routes={t: {"reason": d.reason, "candidates": d.explain()} for t, d in decisions.items()},
            dropped=dict(self.service.node.dropped) if self.service is not None else {},
            health=self.supervisor.report(),
        )
