"""What travels inside envelopes: presence adverts and the request/stream protocol (JSON, pydantic).

Every message names its ``type``; one discriminated union parses them all, so a malformed or unknown
message fails validation in one place and is dropped there. Task payloads (a chat request, an embedding
batch) stay opaque JSON objects here: the mesh moves them, the router and engines give them meaning.

    requester                                   server
    Request(id, task, body, deadline)     ->
                                          <-    Accepted(id, queue_depth)
                                          <-    Chunk(id, seq=0..n, text, token_ids)     (streamed)
                                          <-    Chunk(id, seq=n+1, final=True, body=stats/result)
    Cancel(id)                            ->    (stops generation at the next token)
                                          <-    Failure(id, code, message)               (instead of a result)
    Ping(nonce)                           ->
                                          <-    Pong(nonce)

    hub (admin)                                 member
    GroupKey(epoch, key)                  ->    (sealed to one member: the new household group key
                                                 after a revocation; only admin certificates may send it)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from edge_agent.mesh.household import DeviceCertificate, RevocationList
from edge_agent.mesh.memory import MemoryEntry
from edge_agent.tasks import Task

RequestId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Offer(_Wire):
    """One task a device serves, with the speed it measured for it at start."""

    task: Task
    pack: str = Field(max_length=128)
    rate: float = Field(ge=0, description="Measured tokens/s (generate) or items/s (other tasks).")
    first_ms: float = Field(ge=0, description="Measured time to first token / per-request latency.")
    pairs: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")]] = Field(
        default_factory=list, max_length=32, description="Language pairs served (translate only)."
    )


class Presence(_Wire):
    """Retained, group-sealed advert: who I am (root-signed), what I serve, how busy I am."""

    type: Literal["presence"] = "presence"
    certificate: DeviceCertificate
    crl: RevocationList | None = None
    profile: str = Field(max_length=63)
    device_class: str = Field(max_length=32)
    offers: list[Offer] = Field(default_factory=list, max_length=16)
    queue_depth: int = Field(default=0, ge=0)
    free_model_ram_mb: int = Field(default=0, ge=0)
    translation_memory: bool = Field(default=False, description="Answers shared translation-memory queries.")
    interval_s: float = Field(gt=0, le=3600, description="Next presence within this many seconds.")


class Request(_Wire):
    type: Literal["request"] = "request"
    id: RequestId
    task: Task
    body: dict[str, Any]
    deadline_ms: int = Field(gt=0, le=3_600_000, description="Give up after this long (server side too).")
    stall_ms: int = Field(default=3000, ge=50, le=600_000, description="Requester fails over after this "
                          "long without a message, so the server sends keepalives more often.")  # fmt: skip


class Accepted(_Wire):
    type: Literal["accepted"] = "accepted"
    id: RequestId
    queue_depth: int = Field(ge=0)


class Chunk(_Wire):
    type: Literal["chunk"] = "chunk"
    id: RequestId
    seq: int = Field(ge=0)
    text: str = ""
    token_ids: list[int] = Field(default_factory=list, max_length=4096)
    final: bool = False
    body: dict[str, Any] | None = None


FailureCode = Literal["forbidden", "not-served", "invalid", "busy", "deadline", "internal", "cancelled"]


class Failure(_Wire):
    type: Literal["failure"] = "failure"
    id: RequestId
    code: FailureCode
    message: str = Field(max_length=2000)


class Cancel(_Wire):
    type: Literal["cancel"] = "cancel"
    id: RequestId


class Ping(_Wire):
    type: Literal["ping"] = "ping"
    nonce: int = Field(ge=0)


class Pong(_Wire):
    type: Literal["pong"] = "pong"
    nonce: int = Field(ge=0)


class GroupKey(_Wire):
    type: Literal["group-key"] = "group-key"
    epoch: int = Field(ge=1)
    key: str = Field(pattern=r"^[0-9a-f]{64}$")


class MemoryQuery(_Wire):
    """Ask a peer for translations it already has (keys: digests of normalized sentences)."""

    type: Literal["memory-query"] = "memory-query"
    nonce: int = Field(ge=0)
    pair: str = Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")
    keys: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] = Field(min_length=1, max_length=256)


class MemoryHits(_Wire):
    type: Literal["memory-hits"] = "memory-hits"
    nonce: int = Field(ge=0)
    entries: list[MemoryEntry] = Field(default_factory=list, max_length=256)


Message = Annotated[
    Presence
    | Request
    | Accepted
    | Chunk
    | Failure
    | Cancel
    | Ping
    | Pong
    | GroupKey
    | MemoryQuery
    | MemoryHits,
    Field(discriminator="type"),
]
MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def encode(message: _Wire) -> bytes:
    return message.model_dump_json(exclude_defaults=False).encode()


def decode(payload: bytes) -> Message:
    """Parse one message; raises pydantic.ValidationError for anything malformed or unknown."""
    return MESSAGE.validate_json(payload)
