"""S2 (issue 21): a member approved to serve ``transcribe`` must not choose the commands Home Assistant
runs. Speech meant for actions (Assist through Wyoming, `hearth listen --ha`) is transcribed only by
devices trusted for it ([voice] actions_transcribe); a transcript from another is refused unless the
user confirms it. In-memory mesh: real endpoints and crypto, the router's real failover."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.client.schemas import (
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranscribeStats,
)
from edge_agent.config import VoiceSection
from edge_agent.errors import NoRouteError
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import Chunk, Offer, Request
from edge_agent.models.selection import Plan
from edge_agent.router import Router
from edge_agent.router_settings import RouterSettings
from edge_agent.task_specs import TRANSCRIBE
from edge_agent.voice.transcript import TranscriptPiece
from edge_agent.voice.trust import ActionTranscriber, ActionTrust, UntrustedTranscriptError
from tests.support.meshsim import SimHousehold, household

SAID = "turn off the kitchen lights"
FORGED = "unlock the front door"
TRUSTED_DESC = (
    '[voice] actions_transcribe = "trusted": this device, hub-class devices and [voice] trusted_transcribers'
)


def transcriber(text: str, heard: list[str], name: str):  # type: ignore[no-untyped-def]
    """A peer's transcribe handler: answers ``text`` whatever it was sent; notes that it heard audio."""

    async def handler(req: Request, requester: DeviceCertificate) -> AsyncGenerator[Chunk, None]:
        heard.append(name)
        stats = TranscribeStats(speech_ms=500, windows=1, tokens=5, total_ms=1.0)
        result = TranscribeResult(text=text, segments=[], language="en", model="whisper-tiny.en", stats=stats)
        yield Chunk(id=req.id, seq=0, final=True, body=result.model_dump(mode="json"))

    return handler


def request() -> TranscribeRequest:
    speech = (np.sin(np.arange(8000) / 5) * 3000).astype("<i2").tobytes()
    return TranscribeRequest(segments=[SpeechSegment.from_pcm(0, speech)], language="en")


def offer(rate: float) -> list[Offer]:
    return [Offer(task="transcribe", pack="whisper-tiny.en@int8", rate=rate, first_ms=1.0)]


async def rig(home: SimHousehold, heard: list[str], *, with_hub: bool = True) -> Router:
    """The fridge panel (no Whisper of its own), a fast appliance that lies, and a slower honest hub."""
    panel = home.device("panel", device_class="appliance")
    liar = home.device("oven", serves=["transcribe"], device_class="appliance", offers=offer(50_000),
                       handler=transcriber(FORGED, heard, "oven"))  # fmt: skip
    devices = [panel, liar]
    if with_hub:
        devices.append(home.device("hub", serves=["transcribe"], device_class="hub", offers=offer(5_000),
                                   handler=transcriber(SAID, heard, "hub")))  # fmt: skip
    await home.start(*devices)
    return Router(plan=Plan(profile_id="fridge-panel", budget_mb=0), policy=RouterSettings(),
                  endpoint=panel.endpoint, local_name="panel")  # fmt: skip


async def refuse_plain(request: TranscribeRequest) -> tuple[TranscribeResult, str]:
    raise AssertionError("the plain path is only for a device without the mesh")


async def test_a_command_is_transcribed_only_by_a_trusted_device(tmp_path: Path) -> None:
    heard: list[str] = []
    async with household(tmp_path) as home:
        base = await rig(home, heard)
        # The attack, on the ordinary path (dictation, translation): the fastest transcriber writes it.
        result, by = await base.call(TRANSCRIBE, request())
        assert (result.text, by, heard) == (FORGED, "oven", ["oven"])
        # For a command: the appliance is never asked, the hub (slower, trusted by its class) is.
        heard.clear()
        offloaded = base.offloaded
        trust = ActionTrust.for_voice(VoiceSection().settings())
        for_actions = ActionTranscriber(trust, lambda: base, refuse_plain)
        result, by = await for_actions(request())
        assert (result.text, by, heard) == (SAID, "hub", ["hub"])
        assert base.offloaded == offloaded + 1  # announced with the agent's other offloaded requests
        # The ordinary path is untouched: it still goes where routing says.
        assert (await base.call(TRANSCRIBE, request()))[1] == "oven"


async def test_no_trusted_transcriber_is_a_clear_refusal_and_nothing_is_sent(tmp_path: Path) -> None:
    heard: list[str] = []
    async with household(tmp_path) as home:
        base = await rig(home, heard, with_hub=False)
        before = [(p.device_id, p.banned_until, p.failures) for p in base.endpoint.known()]  # type: ignore[union-attr]
        for_actions = ActionTranscriber(ActionTrust(), lambda: base, refuse_plain)
        with pytest.raises(NoRouteError) as refused:
            await for_actions(request())
        assert str(refused.value) == (
            "no device could finish the request (nowhere to run transcribe: no candidates); "
            f"not trusted to transcribe commands ({TRUSTED_DESC}): oven"
        )
        assert heard == []  # not one window reached the untrusted device
        assert [(p.device_id, p.banned_until, p.failures) for p in base.endpoint.known()] == before  # type: ignore[union-attr]
        assert (await base.call(TRANSCRIBE, request()))[1] == "oven"  # the panel keeps serving


@pytest.mark.parametrize("entry", ["oven", "by-id"])
async def test_the_operator_may_trust_a_device_by_name_or_id(tmp_path: Path, entry: str) -> None:
    heard: list[str] = []
    async with household(tmp_path) as home:
        base = await rig(home, heard, with_hub=False)
        oven = home.devices["oven"].id
        trust = ActionTrust.for_voice(
            VoiceSection(trusted_transcribers=[oven if entry == "by-id" else "oven"]).settings()
        )
        result, by = await ActionTranscriber(trust, lambda: base, refuse_plain)(request())
        assert (result.text, by) == (FORGED, "oven")  # the operator's choice, on the record


async def test_local_means_this_device_only(tmp_path: Path) -> None:
    heard: list[str] = []
    async with household(tmp_path) as home:
        base = await rig(home, heard)
        for_actions = ActionTranscriber(ActionTrust(mode="local"), lambda: base, refuse_plain)
        with pytest.raises(NoRouteError, match=r"not trusted to transcribe commands \(\[voice\] "
                           r'actions_transcribe = "local": this device only\): hub, oven'):  # fmt: skip
            await for_actions(request())
        assert heard == []


def piece(by: str, index: int = 0) -> TranscriptPiece:
    return TranscriptPiece(index=index, text="x", served_by=by)


class Row:
    """A peer as `hearth peers` reports it."""

    def __init__(self, name: str, device_class: str, device_id: str = "0" * 32) -> None:
        self.name, self.device_class, self.device_id = name, device_class, device_id


def test_the_transcripts_origin_is_checked_when_a_running_agent_routed_it() -> None:
    """`hearth listen --ha` through a running agent's socket: the router there chose; the served_by of each
    window decides here, before anything reaches Home Assistant."""
    from edge_agent.cli.listen import confirm_origin

    peers = [Row("hub", "hub"), Row("oven", "appliance"), Row("twin", "hub"), Row("twin", "appliance")]
    trust = ActionTrust()
    ok = [piece("panel (local)"), piece("hub", 1)]
    confirm_origin(trust, ok, "panel", peers, "turn off the lights")  # no question asked
    for by in ("oven", "twin", "gone", "oven (local)"):  # untrusted, ambiguous, unknown, a name posing as us
        with pytest.raises(UntrustedTranscriptError) as refused:
            confirm_origin(trust, [*ok, piece(by, 2)], "panel", peers, FORGED)
        assert str(refused.value) == (
            f"the command was transcribed by {by!r}, not trusted to transcribe commands ({TRUSTED_DESC}): "
            "not sent to Home Assistant"
        )
    asked: list[tuple[str, list[str]]] = []

    def user(text: str, untrusted: list[str], answer: bool) -> bool:
        asked.append((text, untrusted))
        return answer

    confirm_origin(trust, [piece("oven")], "panel", peers, FORGED, lambda t, u: user(t, u, True))
    with pytest.raises(UntrustedTranscriptError):
        confirm_origin(trust, [piece("oven")], "panel", peers, FORGED, lambda t, u: user(t, u, False))
    assert asked == [(FORGED, ["oven"]), (FORGED, ["oven"])]  # the user saw the words and who heard them
    confirm_origin(ActionTrust(mode="any"), [piece("oven")], "panel", peers, FORGED)  # the old behaviour
