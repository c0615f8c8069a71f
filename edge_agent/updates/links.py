"""Direct links for update chunks: where this device listens (a serving agent) and which network its
peers' contacts must be on. Without them chunks go through the broker, so every failure here is a
warning, never an error."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from edge_agent.mesh.direct import DirectLinks, Network, local_address_towards, local_network
from edge_agent.mesh.node import MeshNode
from edge_agent.supervision import Supervisor
from edge_agent.sync.exchange import UpdateExchange
from edge_agent.updates.ports import UpdateSettings

__all__ = ["open_links"]

log = logging.getLogger(__name__)


async def open_links(
    node: MeshNode,
    exchange: UpdateExchange,
    settings: UpdateSettings,
    *,
    listen: bool,
    supervisor: Supervisor,
) -> DirectLinks | None:
    """Open direct links serving ``exchange``'s chunks (listening only if ``listen``: else they ask,
    as a one-shot command does); None when they cannot open."""
    host = await _listen_host(settings) if listen else None
    links = DirectLinks(
        node, exchange.serve_direct, host=host, port=settings.direct_port,
        network=await _own_network(host, settings), supervisor=supervisor,
    )  # fmt: skip
    try:
        await links.__aenter__()
    except OSError as exc:
        log.warning("no direct links on %s (%s); model updates go through the broker", host, exc)
        await links.close()
        return None
    return links


async def _listen_host(settings: UpdateSettings) -> str | None:
    """[updates] direct_address, else the address we reach the broker from; None when no route is
    found (the links then ask only)."""
    if settings.direct_address is not None:
        return settings.direct_address
    try:
        return await asyncio.to_thread(local_address_towards, *_broker(settings))
    except OSError as exc:
        log.warning("no direct links: no route towards the broker (%s)", exc)
        return None


async def _own_network(host: str | None, settings: UpdateSettings) -> Network | None:
    """The network peers' direct contacts must be on (mesh.direct.usable_hosts): that of the address
    we listen on (or would: [updates] direct_address), else of the one we reach the broker from; None
    (no direct asks) if neither is known."""
    address = host or settings.direct_address  # an ask-only device's own LAN address, when named
    try:
        if address is None or ipaddress.ip_address(address).is_unspecified:
            address = await asyncio.to_thread(local_address_towards, *_broker(settings))
        return local_network(address)
    except (OSError, ValueError) as exc:
        log.warning("direct links ask nobody: this device's own network is unknown (%s)", exc)
        return None


def _broker(settings: UpdateSettings) -> tuple[str, int]:
    if settings.broker is None:
        raise OSError("the broker's address is not known here")
    return settings.broker
