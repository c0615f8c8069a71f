"""What the updater reports per model (presence, `hearth models pull`, Home Assistant's update
entities): installed and highest known sequence, and what is happening to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from edge_agent.mesh.protocol import UpdateStatus
from edge_agent.supervision import Supervisor
from edge_agent.sync.exchange import UpdateExchange

__all__ = ["MAX_ROWS", "Finished", "UpdateOutcome", "UpdateState", "status_rows"]

Finished = Literal["activated", "rolled-back", "refused", "gave up"]
UpdateState = Literal[Finished, "current", "fetching", "awaiting-approval", "unverifiable"]

MAX_ROWS = 16
"""Rows one advert carries (the protocol's bound)."""


@dataclass
class UpdateOutcome:
    pack_id: str
    sequence: int
    state: Finished
    reason: str = ""
    report: bytes = b""


def status_rows(
    exchange: UpdateExchange,
    installed: Mapping[str, int],
    outcomes: list[UpdateOutcome],
    awaiting: Mapping[str, int],
    wanted_names: Callable[[], set[str]],
    supervisor: Supervisor,
) -> list[UpdateStatus]:
    """Per model: installed and highest known sequence, and what is happening (for presence/CLI),
    with the highest sequence seeded here whole (the announcement peers act on).

    Never raises: presence is built from it, and part of it comes from peers (unverified claims).
    Each row is built on its own; one that does not validate is left out and counted (the
    supervisor's "model-updates" drops), and this device's other rows still go out."""
    offered: dict[str, int] = {}
    for holding in exchange.holdings.values():
        m = holding.manifest
        if len(holding.have) == len(m.chunks):
            offered[m.name] = max(offered.get(m.name, 0), m.sequence)
    rows: dict[str, UpdateStatus] = {}

    def put(name: str, available: int, state: UpdateState, **more: Any) -> None:
        try:
            rows[name] = UpdateStatus(
                name=name, installed=installed.get(name, 0), available=available, state=state,
                offered=offered.get(name, 0), **more,
            )  # fmt: skip
        except ValidationError as exc:
            supervisor.drop("model-updates", "UpdateStatus", exc, "left a model out of the status")

    for name, seq in installed.items():
        put(name, seq, "current")
    for name, seq in offered.items():
        if name not in rows:
            put(name, max(installed.get(name, 0), seq), "current")
    for outcome in outcomes:
        name = outcome.pack_id.partition("@")[0]
        put(name, max(installed.get(name, 0), outcome.sequence), outcome.state, detail=outcome.reason[:300])
    for manifest, fraction in exchange.progress().values():
        put(manifest.name, manifest.sequence, "fetching", progress=round(fraction, 3))
    for name, sequence in awaiting.items():
        row = rows.get(name)
        if sequence > installed.get(name, 0) and (row is None or row.state != "fetching"):
            put(name, sequence, "awaiting-approval")
    with supervisor.guard("model-updates", "left unverifiable offers out of the status"):
        wanted = wanted_names() if exchange.unverifiable else set()
        for name, (sequence, why) in exchange.unverifiable.items():
            if name not in wanted:  # a claim about a model this device does not run is not its news
                continue
            row, have = rows.get(name), installed.get(name, 0)
            if (row is None and sequence > have) or (row is not None and row.state == "current"):
                detail = f"a peer offers sequence {sequence} that does not verify: {why}"
                put(name, have, "unverifiable", detail=detail[:300])
    return list(rows.values())[:MAX_ROWS]
