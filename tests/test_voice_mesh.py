"""Audio offload over a real Mosquitto: the fridge's VAD keeps the silence, the hub transcribes the speech;
a hub killed mid-recording costs a retry, not the job; ``never_offload`` keeps every sound home."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from benchmarks.rigs import speech
from benchmarks.rigs.brokers import Mosquitto, run_mosquitto
from benchmarks.rigs.meshkit import TwoHubs, config, crash, provision, service, watchdog
from edge_agent.audio.decode import load_audio
from edge_agent.client.schemas import TranscribeRequest, TranscribeResult
from edge_agent.config import AgentConfig
from edge_agent.errors import NoRouteError
from edge_agent.hearth import Hearth
from edge_agent.mesh import topics
from edge_agent.models.store import PackStore
from edge_agent.task_specs import TRANSCRIBE
from edge_agent.voice.transcript import TranscriptPiece, joined_text

pytestmark = pytest.mark.slow  # a real Mosquitto, agents on the built packs


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[str], float]:
    """Two commands with 2 s of silence before, 1.5 s between and 2 s after: (pcm, texts, speech seconds)."""
    root = tmp_path_factory.mktemp("voice-mesh")
    texts = [speech.SENTENCES[0], speech.SENTENCES[4]]
    parts = [speech.speak(t, root / f"p{i}.wav") for i, t in enumerate(texts)]
    spoken = sum(speech.duration_s(p) for p in parts)
    both = speech.joined(parts, root / "both.wav", pause_s=1.5)
    padded = speech.padded(both, root / "padded.wav", lead_s=2.0, trail_s=2.0)
    audio = load_audio(padded, name="padded.wav", max_seconds=60)
    return audio.pcm16(), texts, spoken


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Every corpus sentence, 1 s apart: more speech than one window, so it travels as several."""
    root = tmp_path_factory.mktemp("voice-long")
    parts = [speech.speak(t, root / f"s{i}.wav") for i, t in enumerate(speech.SENTENCES)]
    joined = speech.joined(parts + parts, root / "long.wav", pause_s=1.0)
    return load_audio(joined, name="long.wav", max_seconds=120).pcm16()


def voice_config(name: str, port: int, profile: str, **routing: object) -> AgentConfig:
    data = config(name, port, profile, **routing).model_dump()
    data["mesh"]["self_benchmark"] = name.startswith("hub")  # only the hubs' offers matter here
    # No update rounds: a device's first round queries each new peer's holdings on its request topic,
    # whenever that peer shows up; the eavesdropper below counts every frame there (CI once saw one).
    data["updates"]["enabled"] = False
    return AgentConfig.model_validate(data)


class Eavesdropper:
    """What the broker sees on one device's request topic: frame sizes (all of them ciphertext)."""

    MARKER = b"eavesdropper-marker"

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.sizes: list[int] = []
        self.subscribed = threading.Event()
        self.marked = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="eavesdropper")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(5), "eavesdropper could not subscribe"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.payload == self.MARKER:
            self.marked.set()
        else:
            self.sizes.append(len(msg.payload))

    def flush(self) -> None:
        """Everything the broker took before now has reached us: our own marker comes back after it
        (Mosquitto forwards in the order it receives, and the devices' publishes were acknowledged)."""
        self.client.publish(self.topic, self.MARKER, qos=1)
        assert self.marked.wait(10), "the marker never came back"

    def close(self) -> None:
        self.flush()
        self.client.loop_stop()
        self.client.disconnect()


async def transcribe(device: Hearth, pcm: bytes) -> list[TranscriptPiece]:
    return [piece async for piece in device.transcribe_pcm(pcm)]


async def test_the_fridge_sends_only_speech_and_the_hub_transcribes_it(
    tmp_path: Path, broker: Mosquitto, store: PackStore, recording: tuple[bytes, list[str], float]
) -> None:
    pcm, _texts, spoken_s = recording
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    hub = service(tmp_path / "hub", voice_config("hub", broker.port, "hub"), store)
    fridge = service(tmp_path / "fridge", voice_config("fridge", broker.port, "fridge-panel",
                                                       mode="offload-first"), store)  # fmt: skip
    async with hub, fridge:
        assert hub.mesh.offers["transcribe"].rate > 1000  # ms of speech per second, self-benchmarked
        await fridge.wait_for_peers("transcribe", timeout=5)
        hub_id = hub.mesh.certificate.device_id
        spy = Eavesdropper(broker.port, topics.requests(hub.mesh.membership.household_id, hub_id))
        try:
            pieces = await transcribe(fridge, pcm)
        finally:
            spy.close()
        assert [p.served_by for p in pieces] == ["hub"] and pieces[-1].final
        # The hub's own transcription of the same windows is the same text: one engine, two places.
        local = await transcribe(hub, pcm)
        assert joined_text(pieces) == joined_text(local)
        heard = speech.normalise(joined_text(pieces)).split()
        assert heard[:3] == ["turn", "off", "the"], heard  # espeak's clear voice: the words are right
        assert fridge.agent.models.loaded_tasks() == ["vad"]  # Whisper never loaded on the fridge

        # Bytes on the wire: the speech (base64, in one padded, sealed frame), not the 9.5 s recording.
        total_s = len(pcm) / 32_000
        sent = sum(spy.sizes)
        speech_b64 = spoken_s * 32_000 * 4 / 3
        assert speech_b64 * 0.9 < sent < total_s * 32_000 * 4 / 3 * 0.75, (sent, spoken_s, total_s)
        assert pieces[0].speech_ms < (spoken_s + 0.6) * 1000  # VAD pads 30 ms per edge, no more


async def test_killing_the_hub_mid_window_finishes_the_job_on_the_other(
    tmp_path: Path, broker: Mosquitto, store: PackStore, long_recording: bytes
) -> None:
    """The hub transcribing the recording's second window dies while Whisper runs on it (SIGKILL-like:
    its connection drops, no goodbye); the fridge fails that window over and the job completes."""
    rig = TwoHubs.create(tmp_path, broker.port, store)
    provision(tmp_path / "hub-a", tmp_path / "fridge", "fridge", "fridge-panel")
    fridge = service(tmp_path / "fridge", voice_config("fridge", broker.port, "fridge-panel",
                                                       mode="offload-first"), store)  # fmt: skip
    started: list[str] = []  # which hub began each window, in order
    second = asyncio.Event()

    def watch(name: str, hub: Hearth) -> None:
        async def serving(request: TranscribeRequest) -> AsyncGenerator[TranscribeResult, None]:
            started.append(name)
            if len(started) == 2:
                second.set()
            async for item in TRANSCRIBE.run_here(hub.agent, request):
                yield item

        hub.service.serve_hooks["transcribe"] = serving

    async def kill_the_second_windows_server() -> str:
        await second.wait()
        victim = started[1]
        await crash(rig.hubs[victim])  # Whisper is running on it in a worker thread right now
        return victim

    try:
        async with rig.hubs["hub-a"], rig.hubs["hub-b"], fridge, watchdog(240, "long recording"):
            for name, hub in rig.hubs.items():
                watch(name, hub)
            await fridge.wait_for_peers("transcribe", timeout=10)
            killer = asyncio.create_task(kill_the_second_windows_server())
            pieces = await transcribe(fridge, long_recording)
            victim = await killer
            assert len(pieces) >= 3 and pieces[-1].final
            survivor_name = "hub-b" if victim == "hub-a" else "hub-a"
            assert pieces[1].served_by == survivor_name  # the window the victim died on
            assert {p.served_by for p in pieces[2:]} == {survivor_name}
            reference = await transcribe(rig.hubs[survivor_name], long_recording)
            assert [p.text for p in pieces] == [p.text for p in reference]
    finally:
        await rig.aclose()


async def test_never_offload_keeps_audio_on_the_device(
    tmp_path: Path, broker: Mosquitto, store: PackStore, recording: tuple[bytes, list[str], float]
) -> None:
    pcm, _, _ = recording
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    hub = service(tmp_path / "hub", voice_config("hub", broker.port, "hub"), store)
    strict = voice_config("fridge", broker.port, "fridge-panel", mode="offload-first",
                          never_offload=["transcribe"])  # fmt: skip
    fridge = service(tmp_path / "fridge", strict, store)
    async with hub, fridge:
        await fridge.wait_for_peers("transcribe", timeout=5)
        hub_id = hub.mesh.certificate.device_id
        spy = Eavesdropper(broker.port, topics.requests(hub.mesh.membership.household_id, hub_id))
        try:
            if fridge.plan.for_task("transcribe").mode == "local":
                pieces = await transcribe(fridge, pcm)
                assert {p.served_by for p in pieces} == {"fridge (local)"}
            else:
                with pytest.raises(NoRouteError, match="policy: never offload transcribe"):
                    await transcribe(fridge, pcm)
        finally:
            spy.close()
        assert spy.sizes == []  # not one frame to the hub
