"""The local socket's messages: one call per connection, answered by events (JSON lines, bounded)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from edge_agent.client.schemas import (
    EmbedRequest,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    TranscribeRequest,
    TranslateRequest,
)
from edge_agent.mesh.corrections import Correction
from edge_agent.mesh.protocol import UpdateStatus

MAX_LINE = 4 << 20
MAX_CONNECTIONS = 16


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateCall(_Msg):
    op: Literal["generate"] = "generate"
    request: GenerateRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class EmbedCall(_Msg):
    op: Literal["embed"] = "embed"
    request: EmbedRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class TranslateCall(_Msg):
    op: Literal["translate"] = "translate"
    request: TranslateRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class TranscribeCall(_Msg):
    op: Literal["transcribe"] = "transcribe"
    request: TranscribeRequest
    wait_s: float = Field(default=0.0, ge=0, le=30)


class PeersCall(_Msg):
    op: Literal["peers"] = "peers"
    wait_s: float = Field(default=0.0, ge=0, le=30)


class PullCall(_Msg):
    op: Literal["pull"] = "pull"
    models: list[str] | None = Field(default=None, max_length=64)


class CorrectCall(_Msg):
    op: Literal["correct"] = "correct"
    pair: str = Field(pattern=r"^[a-z]{2,3}-[a-z]{2,3}$")
    source: str = Field(min_length=1, max_length=1000)
    target: str = Field(min_length=1, max_length=3000)
    model: str = Field(default="", max_length=128)


class WithdrawCall(_Msg):
    op: Literal["withdraw"] = "withdraw"
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    here: bool = False
    """Only decline it for this device's own translations (see edge_agent.mesh.corrections)."""


class CorrectionsCall(_Msg):
    op: Literal["corrections"] = "corrections"


Call = Annotated[
    GenerateCall
    | EmbedCall
    | TranslateCall
    | TranscribeCall
    | PeersCall
    | PullCall
    | CorrectCall
    | WithdrawCall
    | CorrectionsCall,
    Field(discriminator="op"),
]
CALL: TypeAdapter[Call] = TypeAdapter(Call)


class RouteEvent(_Msg):
    event: Literal["route"] = "route"
    reason: str
    lines: list[str]


class ChunkEvent(_Msg):
    event: Literal["chunk"] = "chunk"
    chunk: GenerateChunk


class DoneEvent(_Msg):
    event: Literal["done"] = "done"
    served_by: str
    hops: str
    failovers: int
    stats: GenerateStats | None


class ResultEvent(_Msg):
    event: Literal["result"] = "result"
    result: dict[str, Any]
    served_by: str


class PeersEvent(_Msg):
    event: Literal["peers"] = "peers"
    report: dict[str, Any]


class ProgressEvent(_Msg):
    event: Literal["progress"] = "progress"
    updates: list[UpdateStatus]


class PulledOutcome(_Msg):
    pack_id: str
    sequence: int
    state: str
    reason: str = ""


class PulledEvent(_Msg):
    event: Literal["pulled"] = "pulled"
    outcomes: list[PulledOutcome]


class CorrectionsEvent(_Msg):
    event: Literal["corrections"] = "corrections"
    records: list[Correction]


class ErrorEvent(_Msg):
    event: Literal["error"] = "error"
    kind: str
    message: str
    exit_code: int = 1


Event = Annotated[
    RouteEvent
    | ChunkEvent
    | DoneEvent
    | ResultEvent
    | PeersEvent
    | ProgressEvent
    | PulledEvent
    | CorrectionsEvent
    | ErrorEvent,
    Field(discriminator="event"),
]
EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def encode_line(model: BaseModel) -> bytes:
    """One message as a JSON line."""
    return model.model_dump_json().encode() + b"\n"
