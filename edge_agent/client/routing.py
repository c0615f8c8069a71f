"""Routing for a household member that runs no models (Home Assistant): every task goes to the peer
expected to finish first (its offer, load and measured speed), failing over mid-answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.mesh.interfaces import PeerDirectory
    from edge_agent.router import Router
    from edge_agent.router_settings import RouterSettings

__all__ = ["member_router"]


def member_router(
    endpoint: PeerDirectory, *, name: str = "Home Assistant", settings: RouterSettings | None = None
) -> Router:
    """A router over ``endpoint``'s live peers and nothing run here (``name`` is how this member calls
    itself in routing decisions), with ``settings`` (default: the default routing policy and limits)."""
    from edge_agent.router import Router
    from edge_agent.router_settings import RouterSettings

    return Router(policy=settings or RouterSettings(), endpoint=endpoint, local_name=name)
