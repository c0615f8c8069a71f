"""Routing for a household member that runs no models (Home Assistant): every task goes to the peer
expected to finish first (its offer, load and measured speed), failing over mid-answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.mesh.interfaces import PeerDirectory
    from edge_agent.router import Router

__all__ = ["member_router"]


def member_router(endpoint: PeerDirectory, *, name: str = "Home Assistant") -> Router:
    """A router over ``endpoint``'s live peers, with the default routing policy and nothing run here
    (``name`` is how this member calls itself in routing decisions)."""
    from edge_agent.config import RoutingSection
    from edge_agent.router import Router

    return Router(policy=RoutingSection(), endpoint=endpoint, local_name=name)
