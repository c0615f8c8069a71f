"""The Wyoming server as `hearth run` serves it ([voice] wyoming = true), with the real pipeline behind it:
a real wyoming client sends espeak-ng speech at 22.05 kHz stereo and gets Whisper's words back, streamed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jiwer
import pytest

from benchmarks.rigs import speech
from edge_agent.audio.decode import load_audio
from edge_agent.config import AgentConfig
from edge_agent.hearth import Hearth
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile
from edge_agent.voice.transcript import joined_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning"),
]


async def test_a_wyoming_client_hears_whisper_through_the_agent(tmp_path: Path, store: PackStore) -> None:
    from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    text = speech.SENTENCES[3]
    clean = speech.speak(text, tmp_path / "remind.wav", "en-gb", 175)
    raw = tmp_path / "remind.raw"  # as a satellite might send it: 22.05 kHz stereo s16
    subprocess.run(["sox", "-D", "-R", str(clean), "-r", "22050", "-c", "2", "-t", "raw", "-e", "signed",
                    "-b", "16", str(raw)], check=True)  # fmt: skip
    pcm = raw.read_bytes()

    cfg = AgentConfig.model_validate({"agent": {"name": "hub", "profile": "hub"},
                                      "voice": {"wyoming": True, "wyoming_port": 0}})  # fmt: skip
    profile = load_profile("hub")
    plan = plan_for_profile(profile, [p.manifest for p in store.list()])
    async with Hearth(cfg, profile, store, plan, serve=True, state_dir=tmp_path / "state") as hearth:
        assert hearth.wyoming is not None and hearth.wyoming.port > 0
        events = []
        async with AsyncTcpClient("127.0.0.1", hearth.wyoming.port) as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=22050, width=2, channels=2).event())
            step = 4410 * 4  # 100 ms of stereo frames per chunk
            for i in range(0, len(pcm), step):
                chunk = AudioChunk(rate=22050, width=2, channels=2, audio=pcm[i : i + step])
                await client.write_event(chunk.event())
            await client.write_event(AudioStop().event())
            while (event := await client.read_event()) is not None:
                events.append(event)
                if Transcript.is_type(event.type):
                    break
        kinds = [e.type for e in events]
        assert kinds[0] == TranscriptStart().event().type and kinds[-1] == Transcript(text="").event().type
        assert (
            TranscriptChunk(text="").event().type in kinds and TranscriptStop().event().type not in kinds[-1:]
        )
        heard = Transcript.from_event(events[-1]).text
        # The same words as the façade hears in the 16 kHz original: the conversion kept what matters.
        original = load_audio(clean, name=clean.name, max_seconds=60).pcm16()
        own = joined_text([p async for p in hearth.transcribe_pcm(original)])
        assert heard == own
        wrong = jiwer.wer(speech.normalise(text), speech.normalise(heard)) * len(text.split())
        assert round(wrong) <= 1, heard  # tiny.en hears "remind me to my milk" in this voice
