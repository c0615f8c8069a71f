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

    any member                                  everyone (presence board)
    Presence(session, link, offers, ...)        signed advert, re-sent every interval
    Departure(session, link)                    signed notice: left cleanly, or the MQTT last will fired

Direct messages are sealed for the recipient's *session* (a random id per agent start, from its
presence) as well as its inbox, so nothing sealed before a restart opens after it, even if the replay
window on disk lagged behind. Requests carry the requester's session for the replies.

    hub (admin)                                 member
    GroupKey(epoch, key)                  ->    (sealed to one member: the new household group key
                                                 after a revocation; only admin certificates may send it)
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from edge_agent.mesh.corrections import Correction
from edge_agent.mesh.household import DeviceCertificate, RevocationList
from edge_agent.mesh.memory import MemoryEntry
from edge_agent.sync.limits import CHUNK_DATA_CHARS, HELD_HAVE_CHARS, HELD_MANIFEST_CHARS, KEY_SET_CHARS
from edge_agent.tasks import Task

RequestId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Session = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
TaskBody = dict[str, Any]
"""A task's payload (a request, a result, a stream's stats): a JSON object the mesh moves unread. The
requester and the server type it through their task registry (edge_agent.task_specs), which the mesh
cannot import: the typed models belong to the engines."""
MAX_UNKNOWN_FIELDS = 16
MAX_COUNT = 2**53
"""Upper bound of every counter a peer reports (served, offloaded, nonces): exact as a float, so no
arithmetic on it can overflow or lose its meaning."""
MAX_NONCE = (1 << 62) - 1
"""Nonces are random 62-bit numbers (matched, never computed with)."""
MAX_QUEUE = 100_000
"""Upper bound of a queue depth a peer reports: the router multiplies it into an estimate."""
MAX_UNKNOWN_BYTES = 4096


class _Wire(BaseModel):
    """Unknown fields are kept (a newer peer's extra field must not make this one drop its message),
    but few and small, so they cannot smuggle size past the limits of the known ones."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounded_extras(self) -> Any:
        extra = self.__pydantic_extra__ or {}
        if len(extra) > MAX_UNKNOWN_FIELDS:
            raise ValueError(f"{len(extra)} unknown fields (at most {MAX_UNKNOWN_FIELDS})")
        if extra and len(json.dumps(extra, default=str)) > MAX_UNKNOWN_BYTES:
            raise ValueError(f"unknown fields exceed {MAX_UNKNOWN_BYTES} bytes")
        return self


class Offer(_Wire):
    """One task a device serves, with the speed it measured for it at start."""

    task: Task
    pack: str = Field(max_length=128)
    rate: float = Field(
        ge=0, le=100_000, description="Measured tokens/s (generate) or items/s (other tasks)."
    )
    first_ms: float = Field(
        ge=0, le=600_000, description="Measured time to first token / per-request latency."
    )
    pairs: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")]] = Field(
        default_factory=list, max_length=32, description="Language pairs served (translate only)."
    )


class UpdateStatus(_Wire):
    """One model's update state on the advertising device (Home Assistant shows these as update
    entities): the installed sequence, the highest verified sequence it knows of, and what it is doing."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,80}$")
    installed: int = Field(ge=0, le=MAX_COUNT)
    available: int = Field(ge=0, le=MAX_COUNT)
    state: Literal[
        "current",
        "awaiting-approval",
        "fetching",
        "activated",
        "rolled-back",
        "refused",
        "gave up",
        "unverifiable",
    ]
    progress: float = Field(default=1.0, ge=0.0, le=1.0)
    detail: str = Field(default="", max_length=300)
    offered: int = Field(
        default=0,
        ge=0,
        le=MAX_COUNT,
        description="Highest sequence this device seeds whole: the "
        "announcement that makes peers who run the model ask for it at once.",
    )


class DirectContact(_Wire):
    """Where this device accepts direct TLS links from members (bulk data: model update chunks), and
    the SHA-256 of the TLS certificate it will present there (fresh per agent start). Signed inside the
    presence, so a client that checks the fingerprint knows it reached this device (see mesh.direct)."""

    hosts: list[Annotated[str, Field(max_length=45, pattern=r"^[0-9A-Fa-f.:]+$")]] = Field(
        min_length=1, max_length=4
    )
    port: int = Field(ge=1, le=65535)
    tls_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CoapContact(_Wire):
    """Where this device answers CoAP over UDP (`mesh.transports.coap`: the transport that needs no
    broker). Signed inside the presence like `DirectContact`; what is sent there is protected by OSCORE
    keys from a session handshake (or is a sealed frame), so the address needs no certificate pin."""

    hosts: list[Annotated[str, Field(max_length=45, pattern=r"^[0-9A-Fa-f.:]+$")]] = Field(
        min_length=1, max_length=4
    )
    port: int = Field(ge=1, le=65535)


class Health(_Wire):
    """How the advertising device's own loops fare (see edge_agent.supervision): restarts after
    unexpected errors and items dropped, since its agent started. Home Assistant shows them as
    diagnostic sensors; a count above zero is worth a look at that device's log."""

    restarts: int = Field(default=0, ge=0, le=MAX_COUNT)
    dropped: int = Field(default=0, ge=0, le=MAX_COUNT)


class Presence(_Wire):
    """Retained, group-sealed advert: who I am (root-signed), what I serve, how busy I am."""

    type: Literal["presence"] = "presence"
    certificate: DeviceCertificate
    crl: RevocationList | None = None
    session: Session
    """Random per agent start: direct messages to this device are sealed for it."""
    link: int = Field(ge=0, le=2**62)
    """Connection number within the session: a departure notice counts only for the current link."""
    profile: str = Field(max_length=63)
    offers: list[Offer] = Field(default_factory=list, max_length=16)
    queue_depth: int = Field(default=0, ge=0, le=MAX_QUEUE)
    free_model_ram_mb: int = Field(default=0, ge=0, le=1 << 30)
    served: int = Field(
        default=0, ge=0, le=MAX_COUNT, description="Requests answered for peers since the agent started."
    )
    offloaded: int = Field(
        default=0, ge=0, le=MAX_COUNT, description="Own requests peers answered since the start."
    )
    translation_memory: bool = Field(default=False, description="Answers shared translation-memory queries.")
    updates: list[UpdateStatus] = Field(default_factory=list, max_length=16)
    direct: DirectContact | None = None
    coap: CoapContact | None = None
    """Where this device answers CoAP, when it does (absent: MQTT only)."""
    corrections: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{32}$", description="Digest of the shared corrections held."
    )
    health: Health | None = None
    envelopes: list[Annotated[int, Field(ge=1, le=255)]] = Field(default_factory=lambda: [1], max_length=8)
    """Direct-message envelope versions this device opens: 2 is forward-secret sessions (`mesh.sessions`);
    absent (a device from before them) means v1 only."""
    interval_s: float = Field(
        gt=0,
        le=3600,
        description="Next presence within this many seconds "
        "(receivers cap what they believe at their max_presence_interval_s).",
    )


class Departure(_Wire):
    """Signed notice that a device's connection ended: sealed when the link opened (the MQTT last will)
    or when it leaves cleanly. Only counts for the session and link of the device's current advert."""

    type: Literal["departure"] = "departure"
    session: Session
    link: int = Field(ge=0, le=2**62)


class Request(_Wire):
    type: Literal["request"] = "request"
    id: RequestId
    task: Task
    body: TaskBody
    reply_session: Session
    deadline_ms: int = Field(gt=0, le=3_600_000, description="Give up after this long (server side too).")
    stall_ms: int = Field(default=3000, ge=50, le=600_000, description="Requester fails over after this "
                          "long without a message, so the server sends keepalives more often.")  # fmt: skip


class Accepted(_Wire):
    type: Literal["accepted"] = "accepted"
    id: RequestId
    queue_depth: int = Field(ge=0, le=MAX_QUEUE)


class Chunk(_Wire):
    type: Literal["chunk"] = "chunk"
    id: RequestId
    seq: int = Field(ge=0, le=1 << 31)
    text: str = Field(default="", max_length=1 << 20)
    token_ids: list[Annotated[int, Field(ge=0, lt=1 << 31)]] = Field(default_factory=list, max_length=4096)
    final: bool = False
    body: TaskBody | None = None


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
    nonce: int = Field(ge=0, le=MAX_NONCE)
    reply_session: Session


class Pong(_Wire):
    type: Literal["pong"] = "pong"
    nonce: int = Field(ge=0, le=MAX_NONCE)


class GroupKey(_Wire):
    type: Literal["group-key"] = "group-key"
    epoch: int = Field(ge=1, le=MAX_COUNT)
    key: str = Field(pattern=r"^[0-9a-f]{64}$")


class MemoryQuery(_Wire):
    """Ask a peer for translations it already has (keys: digests of normalized sentences)."""

    type: Literal["memory-query"] = "memory-query"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    reply_session: Session
    epoch: int = Field(ge=0, le=MAX_COUNT, description="Group key epoch whose secret salts the digests.")
    pair: str = Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")
    keys: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] = Field(min_length=1, max_length=256)


class MemoryHits(_Wire):
    type: Literal["memory-hits"] = "memory-hits"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    entries: list[MemoryEntry] = Field(default_factory=list, max_length=256)


class CorrectionsQuery(_Wire):
    """Ask a peer for the shared corrections we lack (we list the ids we hold)."""

    type: Literal["corrections-query"] = "corrections-query"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    reply_session: Session
    have: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] = Field(
        default_factory=list, max_length=4096
    )


class CorrectionsData(_Wire):
    """Signed correction records: an answer to a query, or pushed to every member when one is made."""

    type: Literal["corrections-data"] = "corrections-data"
    nonce: int = Field(ge=0, le=MAX_NONCE, description="The query's nonce; 0 when pushed unasked.")
    records: list[Correction] = Field(default_factory=list, max_length=256)


class UpdateQuery(_Wire):
    """Ask a peer which model updates it holds (signed manifests and which of their chunks)."""

    type: Literal["update-query"] = "update-query"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    reply_session: Session


class HeldUpdate(_Wire):
    manifest: str = Field(
        max_length=HELD_MANIFEST_CHARS, description="Base64 of the signed manifest envelope."
    )
    have: str = Field(max_length=HELD_HAVE_CHARS, description="Base64 bitfield of the chunks held.")


class UpdateHoldings(_Wire):
    """An answer to an UpdateQuery, in parts when it would not fit one frame (sizes: sync.limits)."""

    type: Literal["update-holdings"] = "update-holdings"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    key_set: str | None = Field(
        default=None, max_length=KEY_SET_CHARS, description="Base64 key-set envelope."
    )
    held: list[HeldUpdate] = Field(default_factory=list, max_length=8)
    more: bool = Field(default=False, description="More parts of this answer follow.")


class ChunkRequest(_Wire):
    type: Literal["chunk-request"] = "chunk-request"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    reply_session: Session
    content_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    index: int = Field(ge=0, le=1 << 20)


class UpdateApproval(_Wire):
    """A household controller (a hub-class or admin member: Home Assistant, the hub) approves one
    model's sequence on a device whose policy waits for approval (`[updates] approval = "ask"`). It
    unblocks the fetch only: the pack is still verified against the household's update keys."""

    type: Literal["update-approval"] = "update-approval"
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,80}$")
    sequence: int = Field(ge=1, le=MAX_COUNT)


class ChunkData(_Wire):
    type: Literal["chunk-data"] = "chunk-data"
    nonce: int = Field(ge=0, le=MAX_NONCE)
    content_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    index: int = Field(ge=0, le=1 << 20)
    data: str = Field(max_length=CHUNK_DATA_CHARS, description="Base64 of the chunk (verified on arrival).")


Message = Annotated[
    Presence
    | Departure
    | Request
    | Accepted
    | Chunk
    | Failure
    | Cancel
    | Ping
    | Pong
    | GroupKey
    | MemoryQuery
    | MemoryHits
    | UpdateQuery
    | UpdateHoldings
    | ChunkRequest
    | ChunkData
    | CorrectionsQuery
    | CorrectionsData
    | UpdateApproval,
    Field(discriminator="type"),
]
MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def padded_size(n: int, bucket: int) -> int:
    """Bucketed length: a multiple of ``bucket`` up to 16 buckets, then the next power of two, so a
    frame's size says little about what it carries (token lengths, sentence lengths)."""
    if bucket <= 1:
        return n
    if n <= 16 * bucket:
        return max(bucket, math.ceil(n / bucket) * bucket)
    return 1 << (n - 1).bit_length()


def encode(message: BaseModel, pad_to: int = 1) -> bytes:
    """JSON, padded with trailing spaces (valid JSON whitespace) to a size bucket of ``pad_to``."""
    raw = message.model_dump_json(exclude_defaults=False).encode()
    return raw + b" " * (padded_size(len(raw), pad_to) - len(raw))


def decode(payload: bytes) -> Message:
    """Parse one message; raises pydantic.ValidationError for anything malformed or unknown."""
    return MESSAGE.validate_json(payload)
