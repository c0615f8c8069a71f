"""Home Assistant 2025.4.4's own `wyoming` integration (its client, wyoming 1.5.4) on Hearth's Wyoming
server: the config flow a user runs (host and port), the speech-to-text entity it creates, and speech
through Home Assistant's STT API (HTTP, authenticated) coming back as our transcript.

The last test is the product end to end: `hearth run` on a fridge panel serving Wyoming, its VAD finding
the speech, the hub (another `hearth run`) transcribing it over the mesh. The first three pin the
protocol itself with a real `WyomingServer` (in the agent's venv: Home Assistant's has no onnxruntime)
whose transcriber reports the PCM it received (tests/test_wyoming_server.py's stand-in): espeak-ng
speech reaches it byte for byte through Home Assistant, a refused utterance still ends Home Assistant's
wait, and the zeroconf advert adds the server. Every server process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from homeassistant import config_entries
from homeassistant.components import stt
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er

from .conftest import AGENT_PYTHON, REPO, _stop

SENTENCE = "Turn off the kitchen lights."
WAIT_S = 60.0

# The server process (argv: its name, "advertise" or not): prints {"port", "advert"} once listening (and
# advertised), then one {"received": ...} line per utterance (what reached the transcriber, and the
# transcript it made), until stdin closes or it is terminated.
SERVER = """
import asyncio, hashlib, json, logging, sys
from edge_agent import aio
from edge_agent.voice.wyoming_server import WyomingServer
from tests.test_wyoming_server import StandInTranscriber

class Reporting(StandInTranscriber):
    async def transcribe_pcm(self, pcm, *, language="en"):
        pieces = [p async for p in super().transcribe_pcm(pcm, language=language)]
        print(json.dumps({"received": len(pcm), "sha256": hashlib.sha256(pcm).hexdigest(),
                          "language": language, "text": " ".join(p.text for p in pieces)}), flush=True)
        for piece in pieces:
            yield piece

async def main(name, advertise):
    async with WyomingServer(Reporting(), host="127.0.0.1", port=0, name=name, advertise=advertise) as server:
        advert = None
        if server.advertiser is not None:
            await server.advertiser.settled()
            advert = None if server.advertiser.info is None else server.advertiser.info.name
        print(json.dumps({"port": server.port, "advert": advert}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
aio.run(main(sys.argv[1], sys.argv[2:] == ["advertise"]))  # as `hearth run` runs its loop (uvloop)
"""


class WyomingProcess:
    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc, self.name = proc, name
        ready = self.line()
        self.port, self.advert = int(ready["port"]), ready["advert"]

    def line(self) -> dict[str, Any]:
        """The server's next JSON line (blocking: call it from an executor)."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith("{"):
                return json.loads(raw)  # type: ignore[no-any-return]
        raise AssertionError(f"the Wyoming server exited ({self.proc.wait()}) without a line")


@contextlib.contextmanager
def running(tmp_path: Path, name: str, *args: str) -> Iterator[WyomingProcess]:
    """A real Hearth Wyoming server in the agent's venv, on a free loopback port; stopped by its PID."""
    if not AGENT_PYTHON.exists():
        pytest.fail(f"the agent's venv is missing ({AGENT_PYTHON}): run `make install-dev` first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")} | {"PYTHONPATH": str(REPO)}
    log = (tmp_path / "wyoming.log").open("w")
    proc = subprocess.Popen([str(AGENT_PYTHON), "-c", SERVER, name, *args], env=env, cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)  # fmt: skip
    try:
        yield WyomingProcess(proc, name)
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def wyoming_server(tmp_path: Path, socket_enabled: None) -> Iterator[WyomingProcess]:
    with running(tmp_path, "Hearth") as server:
        yield server


@pytest.fixture
def advertised_server(tmp_path: Path, socket_enabled: None) -> Iterator[WyomingProcess]:
    """Advertised over zeroconf on loopback only (never on the machine's LAN); named after this process,
    so that a concurrent run's advert is not ours."""
    with running(tmp_path, f"Hearth {os.getpid()}", "advertise") as server:
        yield server


@pytest.fixture
def speech_pcm(tmp_path: Path) -> bytes:
    """Real speech (espeak-ng, as benchmarks/rigs/speech.py makes it): 16 kHz mono s16, Assist's format."""
    wav = tmp_path / "lights.wav"
    raw = tmp_path / "lights.espeak.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), SENTENCE], check=True)
    subprocess.run(["sox", "-D", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    with wave.open(str(wav), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return w.readframes(w.getnframes())


async def test_home_assistants_wyoming_integration_transcribes_through_hearth(
    hass: HomeAssistant, hass_client: Any, wyoming_server: WyomingProcess, speech_pcm: bytes
) -> None:
    # The user adds "Wyoming Protocol" with the server's host and port: the flow asks describe -> info.
    flow = await hass.config_entries.flow.async_init(
        "wyoming", context={"source": config_entries.SOURCE_USER}
    )
    assert flow["type"] is FlowResultType.FORM and flow["step_id"] == "user"
    result = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {"host": "127.0.0.1", "port": wyoming_server.port}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["title"] == "Hearth"  # the ASR program's name from our info
    entry = result["result"]
    await hass.async_block_till_done()
    assert entry.state is config_entries.ConfigEntryState.LOADED

    # Its speech-to-text entity, in English (the languages of our model).
    entity_id = er.async_get(hass).async_get_entity_id("stt", "wyoming", f"{entry.entry_id}-stt")
    assert entity_id is not None and hass.states.get(entity_id) is not None
    entity = stt.async_get_speech_to_text_entity(hass, entity_id)
    assert entity is not None and entity.supported_languages == ["en"]

    # Speech through Home Assistant's STT API, as the Assist pipeline's clients stream it.
    client = await hass_client()
    response = await client.post(
        f"/api/stt/{entity_id}",
        data=speech_pcm,
        headers={"X-Speech-Content": "format=wav; codec=pcm; sample_rate=16000; bit_rate=16; channel=1; "
                 "language=en"},
    )  # fmt: skip
    assert response.status == 200, await response.text()
    answer = await response.json()
    async with asyncio.timeout(WAIT_S):  # on failure, the fixture's stop ends the blocked read
        heard = await hass.async_add_executor_job(wyoming_server.line)
    # Every byte Home Assistant was given reached the transcriber, in English ...
    assert heard["received"] == len(speech_pcm)
    assert heard["sha256"] == hashlib.sha256(speech_pcm).hexdigest() and heard["language"] == "en"
    # ... and Home Assistant answers with the transcript the server made.
    assert answer == {"text": heard["text"], "result": "success"} and heard["text"]

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_a_refused_utterance_still_ends_home_assistants_wait(
    hass: HomeAssistant, wyoming_server: WyomingProcess
) -> None:
    """A language our models lack (the entity's own call, past the API's language check): Home Assistant
    reads only `transcript`, ignoring `error`, so the server's empty transcript is what ends its wait."""
    flow = await hass.config_entries.flow.async_init(
        "wyoming", context={"source": config_entries.SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {"host": "127.0.0.1", "port": wyoming_server.port}
    )
    entry = result["result"]
    await hass.async_block_till_done()
    entity_id = er.async_get(hass).async_get_entity_id("stt", "wyoming", f"{entry.entry_id}-stt")
    entity = stt.async_get_speech_to_text_entity(hass, entity_id or "")
    assert entity is not None

    async def a_tenth_of_a_second() -> AsyncIterator[bytes]:
        yield b"\0" * 3200

    metadata = stt.SpeechMetadata(
        language="de", format=stt.AudioFormats.WAV, codec=stt.AudioCodecs.PCM,
        bit_rate=stt.AudioBitRates.BITRATE_16, sample_rate=stt.AudioSampleRates.SAMPLERATE_16000,
        channel=stt.AudioChannels.CHANNEL_MONO,
    )  # fmt: skip
    outcome = await entity.internal_async_process_audio_stream(metadata, a_tenth_of_a_second())
    assert outcome == stt.SpeechResult("", stt.SpeechResultState.SUCCESS)
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_the_zeroconf_advert_offers_the_server_to_home_assistant(
    hass: HomeAssistant, advertised_server: WyomingProcess
) -> None:
    """The advert as Home Assistant's zeroconf integration sees it (a real python-zeroconf query on
    loopback, turned into discovery info by Home Assistant's own `info_from_service`) starts the wyoming
    integration's discovery flow, which asks the server itself and adds it."""
    from homeassistant.components.zeroconf import info_from_service
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    assert advertised_server.advert == f"{advertised_server.name}._wyoming._tcp.local."
    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        service = AsyncServiceInfo("_wyoming._tcp.local.", advertised_server.advert)
        assert await service.async_request(aiozc.zeroconf, 10_000)
    finally:
        await aiozc.async_close()
    discovery = info_from_service(service)
    assert discovery is not None
    assert (str(discovery.ip_address), discovery.port) == ("127.0.0.1", advertised_server.port)

    flow = await hass.config_entries.flow.async_init(
        "wyoming", context={"source": config_entries.SOURCE_ZEROCONF}, data=discovery
    )
    assert flow["type"] is FlowResultType.FORM and flow["step_id"] == "zeroconf_confirm", flow
    assert flow["description_placeholders"] == {"name": advertised_server.name}
    result = await hass.config_entries.flow.async_configure(flow["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["title"] == advertised_server.name
    assert result["data"] == {"host": "127.0.0.1", "port": advertised_server.port}
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(result["result"].entry_id)
    await hass.async_block_till_done()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hearth(packs: Path, *args: str) -> str:
    """`hearth ARGS` in the agent's venv (with the real packs); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env |= {"HEARTH_HOME": str(packs), "PYTHONPATH": str(REPO), "HEARTH_MESH__ADVERTISE": "off"}
    args = (str(AGENT_PYTHON), "-m", "edge_agent", *args)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _hub_offers_transcription(config: Path, packs: Path) -> bool:
    """The panel's running agent (asked through its local socket) has heard the hub offer `transcribe`."""
    if not (config.parent / "agent.sock").exists():  # not up yet: `hearth peers` would take its state
        return False
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env |= {"HEARTH_HOME": str(packs), "PYTHONPATH": str(REPO), "HEARTH_MESH__ADVERTISE": "off"}
    done = subprocess.run([str(AGENT_PYTHON), "-m", "edge_agent", "peers", "--json", "--wait", "0", "-c",
                           str(config)], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    if done.returncode != 0:
        return False
    report = json.loads(done.stdout)
    return any(o["task"] == "transcribe" for p in report["peers"] for o in p["offers"])


async def test_a_panels_wyoming_server_has_the_hub_transcribe(
    hass: HomeAssistant, hass_client: Any, hub: Any, tmp_path: Path, speech_pcm: bytes
) -> None:
    """The real thing: `hearth run` on a fridge panel with [voice] wyoming = true. Its plan cannot hold
    Whisper, so its VAD finds the speech and the hub (another `hearth run`) transcribes it over the mesh;
    Home Assistant's own wyoming integration gets the words."""
    from edge_agent.mesh.state import HouseholdState

    from .conftest import add_member, run_agent

    packs = Path(os.environ.get("HEARTH_HOME", str(REPO / ".hearth")))
    plan = await hass.async_add_executor_job(_hearth, packs, "models", "plan", "-p", "fridge-panel", "--json")
    assert json.loads(plan)["tasks"]["transcribe"]["mode"] == "offload-only"  # so the hub must do it
    home = tmp_path / "panel"
    await hass.async_add_executor_job(
        lambda: add_member(
            hub, home, "kitchen-panel", serves=[], device_class="appliance", profile="fridge-panel"
        )
    )
    port = _free_port()
    config = home / "panel.toml"
    config.write_text(
        f'[agent]\nname = "kitchen-panel"\nprofile = "fridge-panel"\n[mesh]\nenabled = true\n'
        f'broker = "{hub.broker}"\nstate_dir = "{home}"\npresence_interval_s = 1.0\n'
        f"[updates]\nenabled = false\n[voice]\nwyoming = true\nwyoming_port = {port}\n"
    )
    assert HouseholdState.exists(home)
    with hub.run():
        panel = run_agent(home, config, packs, tmp_path / "panel.log")
        try:
            async with asyncio.timeout(180):  # the hub self-benchmarks every task first
                while not await hass.async_add_executor_job(_hub_offers_transcription, config, packs):
                    await asyncio.sleep(0.5)  # polling the agent's own answer, not waiting for time
            flow = await hass.config_entries.flow.async_init(
                "wyoming", context={"source": config_entries.SOURCE_USER}
            )
            result = await hass.config_entries.flow.async_configure(
                flow["flow_id"], {"host": "127.0.0.1", "port": port}
            )
            assert result["type"] is FlowResultType.CREATE_ENTRY, result
            assert result["title"] == "Hearth kitchen-panel"
            entry = result["result"]
            await hass.async_block_till_done()
            entity_id = er.async_get(hass).async_get_entity_id("stt", "wyoming", f"{entry.entry_id}-stt")
            assert entity_id is not None
            client = await hass_client()
            response = await client.post(
                f"/api/stt/{entity_id}",
                data=speech_pcm,
                headers={"X-Speech-Content": "format=wav; codec=pcm; sample_rate=16000; bit_rate=16; "
                         "channel=1; language=en"},
            )  # fmt: skip
            assert response.status == 200, await response.text()
            answer = await response.json()
            assert answer["result"] == "success"
            # What the hub's own `hearth listen` hears in the same speech: the same VAD, the same Whisper.
            wav = tmp_path / "lights.wav"
            with wave.open(str(wav), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(speech_pcm)
            heard = await hass.async_add_executor_job(
                _hearth, packs, "listen", str(wav), "--json", "-c", str(hub.config)
            )
            own = json.loads(heard)
            assert own["served_by"] == ["hub (local)"]
            assert answer["text"].strip() == own["text"]
            words = "".join(c for c in own["text"].lower() if c.isalpha() or c == " ").split()
            wrong = sum(a != b for a, b in zip(words, SENTENCE.lower().rstrip(".").split(), strict=True))
            assert wrong <= 1, own  # Whisper tiny hears "turn off my kitchen lights" in this voice
            assert await hass.config_entries.async_unload(entry.entry_id)
            await hass.async_block_till_done()
        finally:
            _stop(panel)
