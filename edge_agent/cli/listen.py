"""``hearth listen``: speech (a file, stdin, the microphone) → text → chat, translation or Home Assistant."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_agent import aio
from edge_agent.cli.common import (
    ConfigOpt,
    Context,
    ProfileOpt,
    console,
    console_err,
    load_context,
    mesh_state_dir,
    open_hearth,
    setup_logging,
)
from edge_agent.errors import ConfigError, InvalidAudioError
from edge_agent.facade import Household
from edge_agent.voice.transcript import TranscriptPiece, joined_text
from edge_agent.voice.trust import ActionTrust

CLIPPED_WARN = 0.01  # a fraction of samples at full scale past which the recording is called clipped


def _read_source(
    audio: str | None, mic: bool, seconds: float, raw: bool, max_seconds: float
) -> tuple[bytes, str]:
    """The recording as 16 kHz mono s16le PCM, and a name for messages."""
    from edge_agent.audio.decode import from_pcm16, load_audio

    if mic:
        if audio is not None:
            raise ConfigError("give an audio file or --mic, not both")
        from edge_agent.audio.microphone import record

        return record(seconds), "the microphone"
    if audio is None:
        raise ConfigError("nothing to listen to: give a WAV/FLAC/OGG file, '-' for stdin, or --mic")
    if audio == "-":
        if sys.stdin.isatty():
            raise ConfigError(
                "'-' reads audio from stdin, but stdin is a terminal (pipe a file or use --mic)"
            )
        data, name = sys.stdin.buffer.read(), "stdin"
        if raw:
            decoded = from_pcm16(data, name=name, max_seconds=max_seconds)
        else:
            decoded = load_audio(data, name=name, max_seconds=max_seconds)
    else:
        path = Path(audio)
        if not path.is_file():
            raise ConfigError(f"{audio}: no such file")
        if raw:
            decoded = from_pcm16(path.read_bytes(), name=audio, max_seconds=max_seconds)
        else:
            decoded = load_audio(path, name=audio, max_seconds=max_seconds)
        name = audio
    if decoded.clipped_fraction > CLIPPED_WARN:
        console_err.print(
            f"[yellow]warning:[/] {name} is clipped ({decoded.clipped_fraction:.1%} of samples at full "
            "scale): the transcript may suffer; record with less gain"
        )
    return decoded.pcm16(), name


def listen(
    audio: Annotated[
        str | None,
        typer.Argument(help="A WAV, FLAC or OGG file (any rate, mono or stereo), or '-' for stdin."),
    ] = None,
    mic: Annotated[bool, typer.Option("--mic", help="Record from the default microphone instead.")] = False,
    seconds: Annotated[float, typer.Option(help="With --mic: how long to record.", min=0.5, max=600)] = 5.0,
    raw: Annotated[
        bool, typer.Option("--raw", help="The input is raw 16 kHz mono s16le PCM (e.g. from arecord -t raw).")
    ] = False,
    chat: Annotated[bool, typer.Option("--chat", help="Answer what was said (the household's LLM).")] = False,
    translate_to: Annotated[
        str | None, typer.Option("--translate-to", help="Translate what was said into this language (pt).")
    ] = None,
    ha: Annotated[
        bool, typer.Option("--ha", help="Hand what was said to Home Assistant's Assist (\\[home_assistant]).")
    ] = False,
    language: Annotated[
        str | None, typer.Option(help="Spoken language (default \\[voice] language: en).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: text, windows, action.")
    ] = False,
    local: Annotated[
        bool, typer.Option("--local", help="Ignore the mesh; transcribe on this device only.")
    ] = False,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Transcribe speech privately (Silero VAD + Whisper tiny.en on ONNX Runtime), then act on it.

    The VAD always runs here: only the speech it finds is transcribed, and when this device cannot
    transcribe well (its plan says offload, or a household peer is much faster) only those speech
    segments go to the peer, encrypted. Set \\[routing] never_offload = ["transcribe"] to keep every
    sound on this device. With --ha the transcript is a command: only devices trusted to transcribe
    commands may (\\[voice] actions_transcribe; a transcript from another needs your confirmation).

    Examples:
      hearth listen command.wav
      hearth listen --mic --seconds 4 --ha            (a spoken command to Home Assistant)
      hearth listen note.flac --translate-to pt       (spoken English → Portuguese text)
      hearth listen question.wav --chat
      arecord -f S16_LE -r 16000 -c 1 -t raw -d 5 | hearth listen - --raw
    """
    actions = [a for a, on in (("--chat", chat), ("--translate-to", translate_to), ("--ha", ha)) if on]
    if len(actions) > 1:
        raise ConfigError(f"choose one action, not {' and '.join(actions)}")
    ctx = load_context(config, profile)
    lang = language or ctx.config.voice.language
    pcm, name = _read_source(audio, mic, seconds, raw, ctx.config.voice.max_seconds)
    setup_logging("warning")
    report: dict[str, Any] = {}
    aio.run(_listen(ctx, pcm, name, lang, local, chat, translate_to, ha, as_json, report))
    if as_json:
        print(json.dumps(report, ensure_ascii=False))


async def _listen(
    ctx: Context,
    pcm: bytes,
    name: str,
    language: str,
    local: bool,
    chat: bool,
    translate_to: str | None,
    ha: bool,
    as_json: bool,
    report: dict[str, Any],
) -> None:
    from edge_agent.mesh.state import HouseholdState
    from edge_agent.voice.local_vad import ManagedVad
    from edge_agent.voice.pipeline import TranscribeWindow, VoicePipeline

    use_mesh = ctx.config.mesh.enabled and not local and HouseholdState.exists(mesh_state_dir(ctx.config))
    pieces: list[TranscriptPiece] = []
    async with open_hearth(ctx, use_mesh=use_mesh) as hearth:
        if use_mesh:
            local_ok = ctx.plan.for_task("transcribe").mode == "local"
            await hearth.wait_for_peers("transcribe", timeout=0.5 if local_ok else 3.0)
        # The VAD runs in this process: a running agent (reached through its socket) gets speech only.
        voice = ctx.config.voice.settings()
        vad = ManagedVad(hearth.models, voice.vad)
        trust = ActionTrust.for_voice(voice)
        transcribe: TranscribeWindow = hearth.transcribe_command if ha else hearth.transcribe
        pipeline = VoicePipeline(vad.find_speech, transcribe, language, voice.max_seconds)
        async for piece in pipeline.transcribe_pcm(pcm, language=language):
            pieces.append(piece)
            if piece.text and not as_json:
                console.print(piece.text, markup=False, highlight=False, soft_wrap=True)
        text = joined_text(pieces)
        served = sorted({p.served_by for p in pieces if p.served_by})
        report.update(text=text, source=name, language=language, served_by=served,
                      windows=[p.model_dump(mode="json") for p in pieces])  # fmt: skip
        if not as_json:
            speech_s = sum(p.speech_ms for p in pieces) / 1000
            by = ", ".join(served) or "nobody (no speech heard)"
            console_err.print(
                f"[dim]{speech_s:.1f} s of speech in {len(pcm) / 32000:.1f} s of audio · "
                f"transcribed by {by}[/]"
            )
        if not text:
            if chat or translate_to or ha:
                raise InvalidAudioError(f"no speech heard in {name}: nothing to act on")
            return
        if chat:
            await _chat(ctx, hearth, text, as_json, report)
        elif translate_to:
            await _translate(hearth, text, language, translate_to, as_json, report)
        elif ha:
            await _check_origin(ctx, hearth, trust, pieces, text, as_json)
            await _ask_home_assistant(ctx, hearth, text, as_json, report)


async def _check_origin(
    ctx: Context,
    hearth: Household,
    trust: ActionTrust,
    pieces: list[TranscriptPiece],
    text: str,
    as_json: bool,
) -> None:
    """The command goes to Home Assistant only if devices trusted for commands transcribed it, or the
    user, shown the words and who heard them, says so (a running agent routed it: checked here)."""
    peers = await hearth.peers()
    confirm = None if as_json or not sys.stdin.isatty() else _ask_user
    confirm_origin(trust, pieces, ctx.config.agent.name, peers.peers, text, confirm)


def _ask_user(text: str, untrusted: list[str]) -> bool:
    from rich.markup import escape

    who = escape(", ".join(repr(u) for u in untrusted))  # peers' words: quoted, never markup
    console_err.print(
        f"[yellow]warning:[/] {who} transcribed this command and is not trusted to transcribe commands "
        f"(\\[voice] actions_transcribe): {escape(repr(text))}",
        highlight=False,
    )
    return bool(typer.confirm("Send it to Home Assistant?", default=False, err=True))


def confirm_origin(
    trust: ActionTrust,
    pieces: list[TranscriptPiece],
    local_name: str,
    peers: Any,
    text: str,
    confirm: Any = None,
) -> None:
    """Raise UntrustedTranscriptError unless every window came from a device trusted for commands or
    ``confirm(text, untrusted devices)`` (the user at a terminal) accepts it."""
    untrusted = trust.untrusted(pieces, local_name, peers)
    if untrusted and (confirm is None or not confirm(text, untrusted)):
        trust.check(pieces, local_name, peers)


async def _chat(ctx: Context, hearth: Household, text: str, as_json: bool, report: dict[str, Any]) -> None:
    from edge_agent.cli.infer import stream_chat
    from edge_agent.client.schemas import GenerateRequest

    gen = ctx.config.generate
    request = GenerateRequest.from_prompt(text, system=gen.system_prompt, max_tokens=gen.max_tokens,
                                          temperature=gen.temperature, top_p=gen.top_p)  # fmt: skip
    routed = hearth.generate(request)
    if as_json:
        answer = "".join([c.text async for c in routed])
    else:
        answer, _ = await stream_chat(routed, show_stats=False)
    report["chat"] = {"answer": answer, "served_by": routed.served_by}


async def _translate(
    hearth: Household, text: str, source: str, target: str, as_json: bool, report: dict[str, Any]
) -> None:
    from edge_agent.client.schemas import TranslateRequest

    result, by = await hearth.translate(TranslateRequest(texts=[text], source=source, target=target))
    report["translation"] = {"text": result.translations[0], "pair": result.pair, "served_by": by}
    if not as_json:
        console.print(result.translations[0], markup=False, highlight=False, soft_wrap=True)


async def _ask_home_assistant(
    ctx: Context, hearth: Household, text: str, as_json: bool, report: dict[str, Any]
) -> None:
    from edge_agent.ha_bridge import HomeAssistantBridge, check_command

    async with HomeAssistantBridge(ctx.config.home_assistant) as bridge:
        reply = await bridge.converse(check_command(text))
    report["home_assistant"] = reply.model_dump(mode="json")
    if not as_json:
        console.print(reply.speech, markup=False, highlight=False, soft_wrap=True)
