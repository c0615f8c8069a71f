"""The VAD on this device's own ModelManager: Silero finds speech before anything is transcribed.

The VAD never runs on a peer: it is what decides which sounds may leave the device at all.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from edge_agent.engines.base import Engine
from edge_agent.errors import NoLocalModelError
from edge_agent.voice.pipeline import Span
from edge_agent.voice.settings import VadSettings

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager


class ManagedVad:
    def __init__(self, models: ModelManager, vad: VadSettings) -> None:
        from edge_agent.engines.vad_models import VadParams

        self.models = models
        self.params = VadParams(
            threshold=vad.threshold,
            min_speech_duration_ms=vad.min_speech_ms,
            min_silence_duration_ms=vad.min_silence_ms,
            speech_pad_ms=vad.speech_pad_ms,
        )

    async def find_speech(self, pcm: bytes) -> list[Span]:
        try:
            self.models.require_local("vad")
        except NoLocalModelError as exc:
            raise NoLocalModelError(
                f"no voice activity detector on this device ({exc}); build it: "
                "hearth models build silero-vad (the VAD always runs here, so that silence and "
                "background sound never leave the device)"
            ) from None
        async with self.models.use("vad") as engine:
            return await asyncio.to_thread(self._spans, engine, pcm)

    def _spans(self, engine: Engine[Any, Any], pcm: bytes) -> list[Span]:
        from edge_agent.audio.pcm import pcm16_to_float
        from edge_agent.engines.vad import VadEngine

        assert isinstance(engine, VadEngine), type(engine)
        found = engine.speech_spans(pcm16_to_float(pcm, "the recording"), self.params)
        return [(span.start_sample, span.end_sample) for span in found]
