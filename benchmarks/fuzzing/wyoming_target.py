"""Fuzz target on the Wyoming server (Home Assistant Assist's speech to text), through its public API
only: a real `WyomingServer` on a loopback port, one TCP connection per input.

An input is a conversation as Home Assistant holds one (``transcribe``, ``audio-start``, ``audio-chunk``
with PCM, ``audio-stop``; ``describe`` and ``ping`` around it), with events dropped, repeated or
swapped, headers and their data mutated as JSON (lengths that lie included), and sometimes the whole
byte stream mutated. The client sends it, half-closes, and reads until the server closes. After each:
the server is still serving, its supervisor counted nothing unexpected, nothing was logged as an error,
and the connection was let go (no slot held). Every few inputs ``describe`` still gets ``info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from benchmarks.fuzzing.hostile import dumps, mutate, mutate_bytes, one_in
from benchmarks.fuzzing.rig import SETTLE_S, Broken, CountErrors
from benchmarks.fuzzing.target import Target
from edge_agent.errors import InvalidAudioError
from edge_agent.supervision import Supervisor
from edge_agent.voice.transcript import TranscriptPiece
from edge_agent.voice.wyoming_server import WyomingServer, WyomingServerState

__all__ = ["WyomingTarget"]

FORMATS = ((16000, 2, 1), (48000, 2, 2), (8000, 1, 1), (22050, 4, 2), (96000, 3, 1), (44100, 2, 1))
KINDS = ("describe", "ping", "transcribe", "audio-start", "audio-chunk", "audio-stop", "select-program", "x")
_FORMAT, _KIND = st.sampled_from(FORMATS), st.sampled_from(KINDS)
_LANGUAGE = st.sampled_from(("en", "en-US", "en_GB", "pt", "", "x" * 40))
_CHUNKS, _EDITS, _AT = st.integers(0, 3), st.integers(0, 2), st.integers(0, 63)
_PCM, _EDIT = st.binary(max_size=3000), st.sampled_from(("drop", "repeat", "swap", "insert"))


class StandInTranscriber:
    """Describes what it was given (no speech recognition: the target is the protocol)."""

    def __init__(self) -> None:
        self.calls = 0

    async def transcribe_pcm(self, pcm: bytes, *, language: str = "en") -> AsyncIterator[TranscriptPiece]:
        self.calls += 1
        if not pcm:
            raise InvalidAudioError("the recording is empty: no audio to transcribe")
        yield TranscriptPiece(index=0, text=f"{len(pcm)} bytes of {language}", served_by="local", final=True)


def _event(
    kind: str, data: dict[str, Any] | None, payload: bytes, separate_data: bool
) -> tuple[dict[str, Any], bytes]:
    header: dict[str, Any] = {"type": kind, "version": "1.7.2"}
    body = b""
    if data is not None and separate_data:
        body = dumps(data)
        header["data_length"] = len(body)
    elif data is not None:
        header["data"] = data
    if payload:
        header["payload_length"] = len(payload)
    return header, body + payload


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """The bytes a client sends on one connection."""
    rate, width, channels = draw(_FORMAT)
    fmt = {"rate": rate, "width": width, "channels": channels}
    plan: list[tuple[str, dict[str, Any] | None, bytes]] = []
    if draw(st.booleans()):
        plan.append(("describe", None, b""))
    language = draw(_LANGUAGE)
    plan.append(("transcribe", {"language": language, "name": "whisper-tiny.en"}, b""))
    plan.append(("audio-start", fmt, b""))
    for _ in range(draw(_CHUNKS)):
        plan.append(("audio-chunk", fmt, draw(_PCM)))
    plan.append(("audio-stop", None, b""))
    for _ in range(draw(_EDITS)):
        how = draw(_EDIT)
        at = draw(_AT) % len(plan) if plan else 0
        if how == "drop" and plan:
            del plan[at]
        elif how == "repeat" and plan:
            plan.insert(at, plan[at])
        elif how == "swap" and len(plan) > 1:
            other = draw(_AT) % len(plan)
            plan[at], plan[other] = plan[other], plan[at]
        else:
            kind = draw(_KIND)
            plan.insert(at, (kind, {"text": "hi"} if kind == "ping" else None, b""))
    stream = b""
    for kind, event_data, pcm in plan:
        header, rest = _event(kind, event_data, pcm, draw(st.booleans()))
        if draw(one_in(4)):
            header = mutate(draw, header)
        stream += dumps(header) + b"\n" + rest
    if draw(one_in(8)):
        stream = mutate_bytes(draw, stream)
    return stream


class WyomingTarget(Target):
    name = "wyoming"
    about = (
        "Wyoming events to the speech-to-text server: Home Assistant's conversation with events dropped, "
        "repeated and swapped, headers, data and lengths mutated, and raw bytes"
    )

    def __init__(self) -> None:
        self.server: WyomingServer | None = None
        self.supervisor = Supervisor()
        self.errors: Counter[str] = Counter()
        self._handler = CountErrors(self.errors)
        self.transcriber = StandInTranscriber()

    async def open(self, tmp: Path) -> None:
        logging.getLogger("edge_agent").addHandler(self._handler)
        self.server = WyomingServer(self.transcriber, host="127.0.0.1", port=0, supervisor=self.supervisor)
        await self.server.__aenter__()

    async def close(self) -> None:
        try:
            if self.server is not None:
                await self.server.__aexit__(None, None, None)
        finally:
            logging.getLogger("edge_agent").removeHandler(self._handler)

    @property
    def live(self) -> WyomingServer:
        assert self.server is not None, "open() first"
        return self.server

    async def _talk(self, stream: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.live.port)
        try:
            async with asyncio.timeout(SETTLE_S):
                writer.write(stream)
                await writer.drain()
                writer.write_eof()
                answer = await reader.read()
        except TimeoutError:
            raise Broken(f"the server held the connection past {SETTLE_S:g} s") from None
        except ConnectionError:
            answer = b""  # the server may cut a client that sends past what it reads (a flood)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return answer

    async def feed(self, data: st.DataObject) -> None:
        await self._talk(data.draw(conversations(), label="conversation"))
        async with asyncio.timeout(SETTLE_S):  # the server let the connection go (its slot is free)
            while self.live.sources:
                await asyncio.sleep(0)

    def check(self) -> None:
        problems = []
        if self.live.state is not WyomingServerState.SERVING:
            problems.append(f"the server is {self.live.state.value}")
        for loop in self.supervisor.report().loops:
            if loop.restarts or loop.dropped:
                problems.append(
                    f"{loop.name} restarted {loop.restarts} time(s), dropped {dict(loop.dropped)} "
                    f"(last error: {loop.last_error})"
                )
        if self.errors:
            problems.append(f"errors logged: {dict(self.errors)}")
        if problems:
            raise Broken("; ".join(problems))

    async def probe(self) -> None:
        answer = await self._talk(b'{"type": "describe"}\n')
        first = answer.split(b"\n", 1)[0]
        try:
            kind = json.loads(first).get("type")
        except ValueError:
            kind = None
        if kind != "info":
            raise Broken(f"describe was answered with {first[:200]!r}, not info")
