"""Handshakes under way, on either side, and what binds their keys: the exporter context."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from edge_agent.mesh.sessions.handshake import Initiator, Responder
from edge_agent.mesh.sessions.table import Session

__all__ = ["Initiating", "Responding", "context_of"]


@dataclass(eq=False, slots=True)
class Initiating:
    """A handshake this device started: who waits for it, and since when (for ``handshake_s``)."""

    initiator: Initiator
    peer: str
    peer_run: str
    index: int
    done: asyncio.Future[Session]
    started: float


@dataclass(eq=False, slots=True)
class Responding:
    """A handshake this device answered (message 2 sent), waiting for message 3."""

    responder: Responder
    peer: str
    peer_run: str
    initiator_index: int
    started: float


def context_of(household: str, initiator: str, responder: str, i_run: str, r_run: str) -> bytes:
    """The exporter context: keys belong to this household, these two devices and these two runs."""
    return "\n".join(["hearth session v2", household, initiator, responder, i_run, r_run]).encode()
