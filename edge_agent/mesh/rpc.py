"""The request/stream rules, without IO: who may ask what, how a stream is put back in order, how
tokens are merged into fewer frames. Bytes and models in, decisions out; tested without a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.errors import StreamBrokenError
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import Accepted, Chunk, Failure, FailureCode, Request
from edge_agent.mesh.settings import MeshLimits

__all__ = ["Refusal", "StreamReassembler", "admit", "keepalive_every_s", "merge_chunks"]


@dataclass(frozen=True, slots=True)
class Refusal:
    code: FailureCode
    message: str


def admit(
    request: Request,
    requester: DeviceCertificate,
    own: DeviceCertificate | None,
    *,
    serving: bool,
    in_service: int,
    in_service_for_requester: int,
    limits: MeshLimits,
) -> Refusal | None:
    """Whether to serve ``request`` now: None to accept, else the refusal to send back.

    Order matters for what a refused requester learns: certificates first (forbidden, not served),
    then load (busy), so an unauthorized device cannot probe how busy we are.
    """
    if request.task not in requester.requests:
        return Refusal(
            "forbidden", f"{requester.name}'s certificate does not allow requesting {request.task}"
        )
    if not serving or own is None or request.task not in own.serves:
        return Refusal("not-served", f"this device does not serve {request.task}")
    if in_service >= limits.max_concurrent_requests:
        return Refusal("busy", f"{in_service} requests in progress")
    if in_service_for_requester >= limits.max_requests_per_requester:
        return Refusal("busy", f"{in_service_for_requester} of your requests are already in progress")
    if request.deadline_ms > limits.max_deadline_s * 1000:
        return Refusal("invalid", f"deadline {request.deadline_ms} ms exceeds {limits.max_deadline_s:g} s")
    return None


def keepalive_every_s(request: Request, limits: MeshLimits) -> float:
    """How often to reassure a waiting requester: a third of its stall timeout, never below the floor."""
    return max(request.stall_ms, limits.min_stall_ms) / 3000


@dataclass
class StreamReassembler:
    """Chunks of one stream, delivered in ``seq`` order exactly once, within bounded memory.

    QoS 1 redelivers, and nothing promises order across reconnects, so chunks may arrive twice or
    early. Early ones wait, at most ``max_reorder_chunks`` of them and ``max_reorder_bytes`` in all;
    past that the stream is broken (a gap that will not fill, or a peer trying to make us hoard).
    """

    limits: MeshLimits
    next_seq: int = 0
    early: dict[int, Chunk] = field(default_factory=dict)
    early_bytes: int = 0

    def push(self, chunk: Chunk) -> list[Chunk]:
        """The chunks now ready, in order. Raises StreamBrokenError past the limits."""
        if len(chunk.text) > self.limits.max_chunk_text_chars:
            raise StreamBrokenError(f"a chunk carries {len(chunk.text)} characters "
                               f"(limit {self.limits.max_chunk_text_chars})")  # fmt: skip
        if chunk.seq < self.next_seq or chunk.seq in self.early:
            return []  # a redelivery
        if chunk.seq == self.next_seq:
            ready = [chunk]
            self.next_seq += 1
            while self.next_seq in self.early:
                nxt = self.early.pop(self.next_seq)
                self.early_bytes -= _size(nxt)
                ready.append(nxt)
                self.next_seq += 1
            return ready
        size = _size(chunk)
        if (
            len(self.early) >= self.limits.max_reorder_chunks
            or self.early_bytes + size > self.limits.max_reorder_bytes
        ):
            raise StreamBrokenError(
                f"stream gap at chunk {self.next_seq}: {len(self.early)} later chunks "
                f"({self.early_bytes} bytes) already waiting"
            )
        self.early[chunk.seq] = chunk
        self.early_bytes += size
        return []


def _size(chunk: Chunk) -> int:
    return len(chunk.text) * 4 + len(chunk.token_ids) * 8 + (len(str(chunk.body)) if chunk.body else 0)


def merge_chunks(chunks: list[Chunk]) -> Chunk:
    """One chunk carrying several: texts and tokens concatenated, the last one's end and result kept."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    return last.model_copy(
        update={
            "text": "".join(c.text for c in chunks),
            "token_ids": [t for c in chunks for t in c.token_ids],
        }
    )


StreamMessage = Chunk | Accepted | Failure
