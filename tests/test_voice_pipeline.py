"""The voice pipeline's logic: speech spans → windows that each fit one mesh frame; bad audio refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.client.schemas import (
    BYTES_PER_SECOND,
    MAX_REQUEST_SPEECH_S,
    SAMPLE_RATE,
    SpeechSegment,
    TranscribeRequest,
    TranscribeResult,
    TranscribeStats,
)
from edge_agent.errors import InvalidAudioError
from edge_agent.mesh import envelope, protocol
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.settings import MeshLimits
from edge_agent.task_specs import TRANSCRIBE
from edge_agent.voice.pipeline import MAX_WINDOW_SAMPLES, Span, VoicePipeline, windows_of
from edge_agent.voice.transcript import TranscriptPiece, joined_text

S = SAMPLE_RATE


def pcm_of(seconds: float) -> bytes:
    """A distinct value per sample index (mod 2^15), so any misplaced slice shows."""
    n = int(seconds * S)
    return b"".join((i % 32000).to_bytes(2, "little", signed=True) for i in range(n))


def test_spans_are_packed_in_order_into_windows_with_their_offsets() -> None:
    pcm = pcm_of(40)
    spans = [(1 * S, 4 * S), (5 * S, 9 * S), (10 * S, 14 * S), (20 * S, 22 * S)]
    windows = windows_of(pcm, spans)
    # 3 + 4 = 7 s fit one 12 s window; the 4 s span would make 11 s: still fits; the last starts a new one.
    assert [[seg.start_ms for seg in w] for w in windows] == [[1000, 5000, 10000], [20000]]
    first = windows[0][1].samples("w0")
    assert first == pcm[5 * S * 2 : 9 * S * 2]  # the exact samples of that span, nothing else


def test_a_span_longer_than_a_window_is_cut_and_silence_never_sent() -> None:
    pcm = pcm_of(60)
    windows = windows_of(pcm, [(2 * S, 32 * S)])
    lengths = [sum(len(seg.samples("w")) for seg in w) // 2 for w in windows]
    assert lengths == [MAX_WINDOW_SAMPLES, MAX_WINDOW_SAMPLES, 30 * S - 2 * MAX_WINDOW_SAMPLES]
    assert [w[0].start_ms for w in windows] == [2000, 2000 + 12_000, 2000 + 24_000]
    sent = sum(len(seg.samples("w")) for w in windows for seg in w)
    assert sent == 30 * S * 2  # the speech only: the 30 s of silence around it stayed here
    assert windows_of(pcm, []) == []


def test_spans_past_the_recording_are_clipped_to_it() -> None:
    pcm = pcm_of(2)
    (window,) = windows_of(pcm, [(-5, S), (S, 10 * S)])
    assert sum(len(seg.samples("w")) for seg in window) == len(pcm)


def test_the_largest_request_fits_one_sealed_mesh_frame() -> None:
    """12 s of speech in 64 segments, padded as the endpoint pads and sealed: under the frame limit."""
    per = int(MAX_REQUEST_SPEECH_S * S) // 64
    segments = [SpeechSegment.from_pcm(i * 1000, b"\x7f\x7f" * per) for i in range(64)]
    request = TranscribeRequest(segments=segments)
    request.validate_audio()
    wire = protocol.Request(id="0" * 32, task="transcribe", body=TRANSCRIBE.encode_request(request),
                            reply_session="0" * 16, deadline_ms=120_000)  # fmt: skip
    payload = protocol.encode(wire, pad_to=256)
    frame = envelope.seal(DeviceIdentity.generate(), topic="hearth/0123456789abcdef/req/" + "0" * 32,
                          counter=1, payload=payload, group_key=bytes(32))  # fmt: skip
    assert len(frame) <= MeshLimits().max_frame_bytes, len(frame)


def test_a_request_over_the_limit_is_refused_before_it_is_sent() -> None:
    too_long = int(MAX_REQUEST_SPEECH_S * S) + S
    request = TranscribeRequest(segments=[SpeechSegment.from_pcm(0, b"\0\0" * (too_long // 2))] * 2)
    with pytest.raises(InvalidAudioError, match=r"13\.0 s of speech in one request \(limit 12 s\)"):
        request.validate_audio()


@pytest.mark.parametrize(
    ("pcm", "message"),
    [
        ("!!!!", "segment 0: pcm is not base64"),
        (base64.b64encode(b"\0\0\0").decode(), "segment 0: 3 bytes is not a whole number of 16-bit samples"),
    ],
)
def test_malformed_pcm_is_named(pcm: str, message: str) -> None:
    with pytest.raises(InvalidAudioError, match=message):
        TranscribeRequest(segments=[SpeechSegment(start_ms=0, pcm=pcm)]).validate_audio()


class Recorder:
    """The pipeline's two edges, recorded: what the VAD was given and what would go to Whisper."""

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.requests: list[TranscribeRequest] = []

    async def find_speech(self, pcm: bytes) -> list[Span]:
        return self.spans

    async def transcribe(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        self.requests.append(request)
        n = len(self.requests)
        stats = TranscribeStats(speech_ms=request.speech_ms, windows=1, tokens=1, total_ms=1.0)
        result = TranscribeResult(text=f" window {n} ", segments=[], language="en", model="m", stats=stats)
        return result, f"peer{n}"


async def test_pipeline_yields_one_piece_per_window_the_last_final() -> None:
    rec = Recorder([(0, S), (20 * S, 33 * S)])
    pipeline = VoicePipeline(rec.find_speech, rec.transcribe)
    pieces = [p async for p in pipeline.transcribe_pcm(pcm_of(40))]
    assert [(p.index, p.text, p.served_by, p.final) for p in pieces] == [
        (0, "window 1", "peer1", False),
        (1, "window 2", "peer2", False),
        (2, "window 3", "peer3", True),
    ]
    assert joined_text(pieces) == "window 1 window 2 window 3"
    assert sum(r.speech_ms for r in rec.requests) == 14_000


async def test_no_speech_is_one_empty_final_piece_and_nothing_sent() -> None:
    rec = Recorder([])
    pieces = [p async for p in VoicePipeline(rec.find_speech, rec.transcribe).transcribe_pcm(pcm_of(3))]
    assert pieces == [TranscriptPiece(index=0, text="", served_by="", final=True)]
    assert rec.requests == []


@pytest.mark.parametrize(
    ("pcm", "message"),
    [
        (b"", "the recording is empty: no audio to transcribe"),
        (b"\0\0\0", "the recording: 3 bytes is not a whole number of 16-bit samples"),
        (b"\0\0" * (S * 11), r"the recording is 11 s long; the limit is 10 s \(\[voice\] max_seconds\)"),
    ],
)
async def test_bad_recordings_are_refused_with_what_was_wrong(pcm: bytes, message: str) -> None:
    rec = Recorder([(0, S)])
    pipeline = VoicePipeline(rec.find_speech, rec.transcribe, max_seconds=10)
    with pytest.raises(InvalidAudioError, match=message):
        [p async for p in pipeline.transcribe_pcm(pcm)]
    assert rec.requests == []
    assert BYTES_PER_SECOND == 2 * S


class Base64Counter:
    """Counts every base64 encode and decode made while it is installed (schemas import base64 lazily)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.encodes = self.decodes = 0
        encode, decode = base64.b64encode, base64.b64decode

        def counted_encode(*args: Any, **kwargs: Any) -> bytes:
            self.encodes += 1
            return encode(*args, **kwargs)

        def counted_decode(*args: Any, **kwargs: Any) -> bytes:
            self.decodes += 1
            return decode(*args, **kwargs)

        monkeypatch.setattr(base64, "b64encode", counted_encode)
        monkeypatch.setattr(base64, "b64decode", counted_decode)

    def take(self) -> tuple[int, int]:
        counts, self.encodes, self.decodes = (self.encodes, self.decodes), 0, 0
        return counts


def _served_here(request: TranscribeRequest) -> None:
    """What the device that runs Whisper does with a request: the agent's check, the engine's own, and
    the engine joining the segments' samples (`Agent.run`, `TranscribeEngine.transcribe`)."""
    from edge_agent.engines.transcribe import join_segments

    TRANSCRIBE.validate(request)
    request.validate_audio()
    join_segments(request.segments)


def test_pcm_stays_bytes_until_the_wire_and_is_decoded_once_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per window of speech: no base64 at all when it is transcribed here (it was 1 encode, 4 decodes);
    across the mesh, 1 encode (the request body) and 1 decode on the peer (it was 1 + 1 here, 4 there)."""
    counter = Base64Counter(monkeypatch)
    pcm = pcm_of(10)

    (window,) = windows_of(pcm, [(0, S), (2 * S, 3 * S)])  # one window of two segments
    local = TranscribeRequest(segments=window)
    TRANSCRIBE.validate(local)  # the router's check
    _served_here(local)
    assert counter.take() == (0, 0)

    (window,) = windows_of(pcm, [(0, S), (2 * S, 3 * S)])
    request = TranscribeRequest(segments=window)
    TRANSCRIBE.validate(request)
    body = json.dumps(TRANSCRIBE.encode_request(request))  # the request body: the only encoding
    assert counter.take() == (2, 0)  # one per segment
    on_peer = TRANSCRIBE.decode_request(json.loads(body))
    TRANSCRIBE.validate(on_peer)  # task_specs.serve
    _served_here(on_peer)
    assert counter.take() == (0, 2)  # one per segment, kept for every later check
    assert on_peer == request and [s.samples("s") for s in on_peer.segments] == [
        pcm[: 2 * S],
        pcm[4 * S : 6 * S],
    ]


def test_a_segment_made_here_and_one_from_the_wire_are_the_same_segment() -> None:
    here = SpeechSegment.from_pcm(250, b"\x01\x02" * 801)
    wire = SpeechSegment.model_validate_json(here.model_dump_json())
    assert isinstance(here.pcm, bytes) and isinstance(wire.pcm, str)
    assert here == wire and here.model_dump() == wire.model_dump()
    assert here.duration_ms == wire.duration_ms == 50
    assert wire.model_dump()["pcm"] == base64.b64encode(b"\x01\x02" * 801).decode("ascii")
    longest = b"\0" * (int(MAX_REQUEST_SPEECH_S * BYTES_PER_SECOND) + 3)  # the base64 bound, as bytes
    assert SpeechSegment.from_pcm(0, longest) == SpeechSegment(
        start_ms=0, pcm=base64.b64encode(longest).decode()
    )
    with pytest.raises(ValidationError):  # one byte more: over the bound in either form
        SpeechSegment.from_pcm(0, longest + b"\0")
    with pytest.raises(ValidationError):
        SpeechSegment(start_ms=0, pcm=base64.b64encode(longest + b"\0").decode())
    with pytest.raises(ValidationError):
        SpeechSegment.from_pcm(0, b"")
