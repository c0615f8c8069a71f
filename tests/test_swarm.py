"""The fetcher's rules, IO-free, on a fake clock: rarest first from every holder, a bad chunk bans its
sender by device key and is fetched elsewhere, lost peers and silent requests requeue, a resumed fetch
starts from its verified chunks, and giving up is a state with a reason."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import ChunkDigestError, EndlessDataError, MalformedUpdateError
from edge_agent.sync.describe import describe
from edge_agent.sync.digests import merkle_root
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.swarm import FetchState, SwarmFetch, decode_bitfield, encode_bitfield

CHUNK = 16 << 10
DATA = b"".join(
    hashlib.blake2b(i.to_bytes(4, "big"), digest_size=64).digest() for i in range(20 * CHUNK // 64 + 5)
)
A, B, C = "a" * 32, "b" * 32, "c" * 32


def manifest() -> UpdateManifest:
    files, chunks = describe([("model.onnx", io.BytesIO(DATA))], CHUNK)
    now = datetime(2026, 11, 30, tzinfo=UTC)
    return UpdateManifest(
        household_id="0" * 16, name="demo", pack_id="demo@int8", task="embed", device_classes=["hub"],
        sequence=2, issued_at=now, expires_at=now + timedelta(days=1), chunk_size=CHUNK,
        total_size=len(DATA), files=files, chunks=chunks,
        merkle_root=merkle_root([bytes.fromhex(c) for c in chunks]).hex(),
    )  # fmt: skip


def chunk(m: UpdateManifest, i: int) -> bytes:
    _, offset, length = m.chunk_location(i)
    return DATA[offset : offset + length]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(
    fetch: SwarmFetch, serve: dict[str, object], pending: list[tuple[str, int]] | None = None
) -> list[tuple[str, int]]:
    """Answer every request at once (a peer's value: 'good', 'bad' or 'silent'), starting with requests
    already sent (``pending``); the requests answered, in order."""
    log: list[tuple[str, int]] = []
    for _ in range(200):
        batch, pending = pending or fetch.next_requests(), None
        if not batch:
            break
        for peer, index in batch:
            log.append((peer, index))
            if serve[peer] == "good":
                fetch.on_chunk(peer, index, chunk(fetch.manifest, index))
            elif serve[peer] == "bad" and peer in fetch.banned:  # replies after the ban count for nothing
                assert fetch.on_chunk(peer, index, b"\x00" * fetch.manifest.chunk_length(index)) is False
            elif serve[peer] == "bad":
                with pytest.raises(ChunkDigestError):
                    fetch.on_chunk(peer, index, b"\x00" * fetch.manifest.chunk_length(index))
    return log


def test_all_holders_serve_and_the_rarest_chunk_goes_first() -> None:
    m = manifest()
    n = len(m.chunks)
    fetch = SwarmFetch(m, now=Clock())
    fetch.peer_holds(A, range(n))
    fetch.peer_holds(B, range(n))
    fetch.peer_holds(C, [n - 1])  # chunk n-1 has three holders; the rest two
    first = fetch.next_requests()
    assert [i for _, i in first] == [*range(8), n - 1]  # rarest (two holders) by index, then more room
    assert {p for p, _ in first} == {A, B, C}  # every holder is asked
    run(fetch, {A: "good", B: "good", C: "good"}, pending=first)
    assert fetch.state is FetchState.DONE and fetch.progress == (len(DATA), len(DATA))
    assert fetch.peers[A].served > 0 and fetch.peers[B].served > 0


def test_a_bad_chunk_bans_its_sender_and_is_fetched_elsewhere() -> None:
    m = manifest()
    fetch = SwarmFetch(m, now=Clock())
    for peer in (A, B, C):
        fetch.peer_holds(peer, range(len(m.chunks)))
    run(fetch, {A: "good", B: "bad", C: "good"})
    assert fetch.state is FetchState.DONE
    assert list(fetch.banned) == [B] and "bad chunk" in fetch.banned[B]
    fetch.peer_holds(B, range(len(m.chunks)))  # its next announcement changes nothing
    assert B not in fetch.peers


def test_more_than_signed_is_endless_data_and_bans() -> None:
    m = manifest()
    fetch = SwarmFetch(m, now=Clock())
    fetch.peer_holds(A, [0])
    [(peer, index)] = fetch.next_requests()
    with pytest.raises(EndlessDataError):
        fetch.on_chunk(peer, index, chunk(m, 0) + b"more")
    assert A in fetch.banned and 0 not in fetch.have


def test_unasked_and_duplicate_chunks_are_ignored() -> None:
    m = manifest()
    fetch = SwarmFetch(m, now=Clock())
    fetch.peer_holds(A, [0, 1])
    assert fetch.on_chunk(A, 0, chunk(m, 0)) is False  # nobody asked: not written, not trusted
    assert fetch.have == set()


def test_a_lost_seeder_and_a_silent_request_requeue_their_chunks() -> None:
    m = manifest()
    clock = Clock()
    fetch = SwarmFetch(m, now=clock, request_timeout_s=10)
    fetch.peer_holds(A, range(len(m.chunks)))
    asked_a = {i for _, i in fetch.next_requests()}
    fetch.peer_gone(A)  # killed mid-transfer
    fetch.peer_holds(B, range(len(m.chunks)))
    fetch.peer_holds(C, range(len(m.chunks)))
    silent = fetch.next_requests()
    assert asked_a <= {i for _, i in silent}  # what A owed is asked again
    clock.t += 11  # nobody answered in time
    retried = fetch.next_requests()
    assert {i for _, i in silent} <= {i for _, i in retried}
    run(fetch, {B: "good", C: "good"}, pending=retried)
    assert fetch.state is FetchState.DONE


def test_a_resumed_fetch_asks_only_for_what_it_lacks() -> None:
    m = manifest()
    have = set(range(0, len(m.chunks), 2))
    fetch = SwarmFetch(m, have=have, now=Clock())
    fetch.peer_holds(A, range(len(m.chunks)))
    log = run(fetch, {A: "good"})
    assert {i for _, i in log} == set(range(1, len(m.chunks), 2))
    assert fetch.state is FetchState.DONE


def test_gave_up_is_a_state_with_a_reason() -> None:
    m = manifest()
    clock = Clock()
    fetch = SwarmFetch(m, now=clock, orphan_grace_s=30)
    fetch.peer_holds(A, range(len(m.chunks)))
    fetch.peer_holds(B, range(3))
    run(fetch, {A: "bad", B: "good"})  # the only full holder lies
    assert fetch.state is FetchState.FETCHING and fetch.have == {0, 1, 2}
    clock.t += 31
    assert fetch.next_requests() == []
    assert fetch.state is FetchState.GAVE_UP
    assert fetch.reason.startswith("no reachable peer has chunk 3") and A[:8] in fetch.reason

    budget = SwarmFetch(m, now=clock, budget_s=60)
    budget.peer_holds(C, range(len(m.chunks)))
    budget.next_requests()
    clock.t += 61
    assert budget.next_requests() == [] and budget.state is FetchState.GAVE_UP
    assert "after 60 s" in budget.reason


def test_bitfields_round_trip_and_refuse_the_wrong_length() -> None:
    for count in (1, 7, 8, 9, 20, 64):
        have = set(range(0, count, 3))
        assert decode_bitfield(encode_bitfield(have, count), count) == have
    with pytest.raises(MalformedUpdateError, match="does not describe 20 chunks"):
        decode_bitfield(encode_bitfield({1}, 32), 20)
    with pytest.raises(MalformedUpdateError, match="does not describe 20 chunks"):
        decode_bitfield(encode_bitfield(range(24), 24), 20)
    with pytest.raises(MalformedUpdateError, match="not base64"):
        decode_bitfield("!!", 8)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=64), count=st.integers(min_value=0, max_value=200))
def test_fuzz_bitfields_only_raise_the_verifiers_error(text: str, count: int) -> None:
    try:
        got = decode_bitfield(text, count)
    except MalformedUpdateError:
        return
    assert all(0 <= i < count for i in got)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=-5, max_value=40), data=st.binary(max_size=CHUNK + 64))
def test_fuzz_chunks_only_raise_the_verifiers_errors(index: int, data: bytes) -> None:
    m = manifest()
    fetch = SwarmFetch(m, now=Clock())
    fetch.peer_holds(A, range(len(m.chunks)))
    fetch.next_requests()
    try:
        assert fetch.on_chunk(A, index, data) is False  # random bytes never pass as a signed chunk
    except (ChunkDigestError, EndlessDataError, MalformedUpdateError):
        assert A in fetch.banned
    assert fetch.have == set()
