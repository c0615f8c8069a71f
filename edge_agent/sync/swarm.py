"""Which chunk to ask which peer for, what each answer means, and when to give up: the fetcher's rules
without IO (the transport feeds it peers' holdings and replies; it answers with requests to send).

- Rarest first (BitTorrent): among chunks we lack and nobody is fetching, the one fewest peers hold,
  so a seeder that leaves takes the fewest unique chunks with it. Ties go in an order of this fetcher's
  own (``tiebreak``): devices fetching from one seeder at once then ask it for different chunks and
  have something to give each other (with one order for all, they would all hold the same first ones).
- Every peer that holds a chunk may be asked for it, up to a few requests in flight per peer, so a pack
  comes from all holders at once and a finished device is a seeder like any other.
- A chunk is verified on arrival against the signed manifest: a bad one bans its sender by device key
  (the signed per-chunk digest names the culprit exactly; BitTorrent's smart-ban has to guess, by IP)
  and the chunk goes back in the queue for someone else.
- A request unanswered in time, or a peer that leaves, puts its chunks back in the queue.
- "Gave up" is a state with a reason (no holder left for a chunk, or the total time budget spent),
  never a hang.
"""

from __future__ import annotations

import base64
import enum
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edge_agent.errors import ChunkDigestError, EndlessDataError, MalformedUpdateError
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.trust import TrustedUpdates

__all__ = ["FetchState", "SwarmFetch", "decode_bitfield", "encode_bitfield"]


def encode_bitfield(have: Iterable[int], count: int) -> str:
    """Chunk indices as a base64 bitfield (bit i of byte i // 8, most significant first)."""
    bits = bytearray((count + 7) // 8)
    for i in have:
        if 0 <= i < count:
            bits[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bytes(bits)).decode()


def decode_bitfield(text: str, count: int) -> set[int]:
    """The indices of a bitfield; refused if it is not exactly ``count`` bits long (padding zero)."""
    try:
        bits = base64.b64decode(text, validate=True)
    except ValueError:
        raise MalformedUpdateError("chunk bitfield is not base64") from None
    if len(bits) != (count + 7) // 8 or (count % 8 and bits[-1] & (0xFF >> (count % 8))):
        raise MalformedUpdateError(f"chunk bitfield does not describe {count} chunks")
    return {i for i in range(count) if bits[i // 8] & (0x80 >> (i % 8))}


class FetchState(enum.Enum):
    FETCHING = "fetching"
    DONE = "done"
    GAVE_UP = "gave up"


@dataclass
class _Peer:
    holds: set[int] = field(default_factory=set)
    in_flight: dict[int, float] = field(default_factory=dict)
    """chunk -> when it was asked for."""
    served: int = 0


@dataclass
class SwarmFetch:
    manifest: UpdateManifest
    have: set[int] = field(default_factory=set)
    """Chunks already verified on disk (a resumed fetch starts from them)."""
    per_peer: int = 4
    request_timeout_s: float = 10.0
    budget_s: float = 1800.0
    """Total time allowed; then the fetch gives up with a reason."""
    tiebreak: int = 0
    """Seeds this fetcher's order among equally rare chunks (0: lowest index first)."""
    orphan_grace_s: float = 60.0
    """How long a missing chunk may have no holder at all before the fetch gives up."""
    now: Callable[[], float] = time.monotonic
    peers: dict[str, _Peer] = field(default_factory=dict)
    banned: dict[str, str] = field(default_factory=dict)
    """device id -> why (a bad chunk, named by the manifest's digest)."""
    state: FetchState = FetchState.FETCHING
    reason: str = ""
    started: float = 0.0
    _orphaned_since: float | None = None

    def __post_init__(self) -> None:
        self.started = self.now()
        self._total = len(self.manifest.chunks)
        self._order = list(range(self._total))
        if self.tiebreak:
            random.Random(self.tiebreak).shuffle(self._order)
        self._rank = {index: rank for rank, index in enumerate(self._order)}
        self.have = {i for i in self.have if 0 <= i < self._total}
        self._settle()

    # -- what we learn ------------------------------------------------------------------------------

    def peer_holds(self, device_id: str, chunks: Iterable[int]) -> None:
        """A peer's holdings (from its announcement or bitfield reply); banned peers are ignored."""
        if device_id in self.banned:
            return
        self.peers.setdefault(device_id, _Peer()).holds = {i for i in chunks if 0 <= i < self._total}

    def peer_gone(self, device_id: str) -> None:
        self.peers.pop(device_id, None)

    def on_chunk(self, device_id: str, index: int, data: bytes) -> bool:
        """A reply. True if it is a new verified chunk (write it); False if it is a duplicate or
        unasked-for; a bad chunk bans ``device_id`` and raises the verifier's error."""
        peer = self.peers.get(device_id)
        asked = peer is not None and index in peer.in_flight
        if peer is not None:
            peer.in_flight.pop(index, None)
        if device_id in self.banned or not asked:
            return False
        try:
            TrustedUpdates.verify_chunk(self.manifest, index, data)
        except (ChunkDigestError, EndlessDataError, MalformedUpdateError) as exc:
            self.ban(device_id, f"served a bad chunk {index}: {exc}")
            raise
        if index in self.have:
            return False
        self.have.add(index)
        assert peer is not None
        peer.served += 1
        self._settle()
        return True

    def not_held(self, device_id: str, index: int) -> None:
        """A peer said it does not have a chunk after all: ask someone else, and not it again."""
        peer = self.peers.get(device_id)
        if peer is not None:
            peer.in_flight.pop(index, None)
            peer.holds.discard(index)
            self._settle()

    def ban(self, device_id: str, why: str) -> None:
        self.banned[device_id] = why
        self.peers.pop(device_id, None)

    # -- what we do next ----------------------------------------------------------------------------

    def next_requests(self, limit: int | None = None) -> list[tuple[str, int]]:
        """(peer, chunk) requests to send now; each chunk asked of one peer at a time, and at most
        ``limit`` in flight in all (transfers yield to inference by asking for less)."""
        if self.state is not FetchState.FETCHING:
            return []
        now = self.now()
        for peer in self.peers.values():  # timed-out requests go back in the queue
            for index, asked in list(peer.in_flight.items()):
                if now - asked > self.request_timeout_s:
                    del peer.in_flight[index]
        self._settle()
        if self.state is not FetchState.FETCHING:
            return []
        wanted = self.missing() - self.in_flight()
        rarity = {i: sum(1 for p in self.peers.values() if i in p.holds) for i in wanted}
        out: list[tuple[str, int]] = []
        room = None if limit is None else limit - len(self.in_flight())
        for index in sorted((i for i in wanted if rarity[i]), key=lambda i: (rarity[i], self._rank[i])):
            holders = [
                (len(p.in_flight), d)
                for d, p in self.peers.items()
                if index in p.holds and len(p.in_flight) < self.per_peer
            ]
            if not holders:
                continue
            if room is not None and len(out) >= room:
                break
            _, chosen = min(holders)
            self.peers[chosen].in_flight[index] = now
            out.append((chosen, index))
        return out

    # -- where we are -------------------------------------------------------------------------------

    def missing(self) -> set[int]:
        return set(range(self._total)) - self.have

    def in_flight(self) -> set[int]:
        return {i for p in self.peers.values() for i in p.in_flight}

    @property
    def progress(self) -> tuple[int, int]:
        """(verified bytes, total bytes)."""
        done = sum(self.manifest.chunk_length(i) for i in self.have)
        return done, self.manifest.total_size

    def _settle(self) -> None:
        if self.state is not FetchState.FETCHING:
            return
        if not self.missing():
            self.state = FetchState.DONE
            return
        now = self.now()
        if now - self.started > self.budget_s:
            self._give_up(f"{len(self.missing())} chunks still missing after {self.budget_s:.0f} s")
            return
        held = set().union(*(p.holds for p in self.peers.values())) if self.peers else set()
        orphans = self.missing() - held
        if not orphans:
            self._orphaned_since = None
        elif self._orphaned_since is None:
            self._orphaned_since = now
        elif now - self._orphaned_since > self.orphan_grace_s:
            banned = f"; banned: {', '.join(d[:8] for d in self.banned)}" if self.banned else ""
            self._give_up(
                f"no reachable peer has chunk {min(orphans)} (and {len(orphans) - 1} more) "
                f"for {self.orphan_grace_s:.0f} s{banned}"
            )

    def give_up(self, reason: str) -> None:
        """Stop for a reason found outside these rules (no disk space, the agent stopping)."""
        if self.state is FetchState.FETCHING:
            self._give_up(reason)

    def _give_up(self, reason: str) -> None:
        self.state = FetchState.GAVE_UP
        self.reason = reason
        for peer in self.peers.values():
            peer.in_flight.clear()
