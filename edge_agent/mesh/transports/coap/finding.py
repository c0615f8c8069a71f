"""Discovery rounds while a CoAP transport is open: the configured seeds, a multicast probe on each
joined interface (`discovery.probe`), the mDNS browser's candidates (`dnssd`, with this endpoint
advertised beside it); every address found gets a board fetch. A round then waits for the browser to
change, or ``rediscover_s``.

mDNS names are tags, never ids: anyone on the LAN sees them, so they are hashes (the same household
gives the same tag, which is what the browser filters on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

from edge_agent.mesh.settings import CoapSettings
from edge_agent.mesh.transports.coap.book import Endpoint
from edge_agent.mesh.transports.coap.discovery import ProbeError, probe
from edge_agent.mesh.transports.coap.dnssd import CoapBrowser, CoapService

__all__ = ["discovery_rounds", "tag"]

log = logging.getLogger(__name__)


def tag(name: str) -> str:
    """A non-secret mDNS tag for a household or device id."""
    return hashlib.sha256(f"hearth-coap/{name}".encode()).hexdigest()[:16]


async def discovery_rounds(
    settings: CoapSettings,
    *,
    household: str,
    device: str,
    port: int,
    fetch: Callable[[Endpoint], Awaitable[None] | None],
    first_done: asyncio.Event,
    live: Callable[[], bool],
) -> None:
    """Rounds until ``live`` turns False; ``first_done`` is set once the first round's fetches ended."""
    own = (settings.bind, port)
    async with contextlib.AsyncExitStack() as stack:
        browser: CoapBrowser | None = None
        if settings.zeroconf:
            browser = await stack.enter_async_context(
                CoapBrowser(tag(household), limit=settings.max_fetches * 8)
            )
            service = CoapService(
                tag=tag(device)[:12],
                household_tag=tag(household),
                addresses=settings.advertise or [settings.bind],
                port=port,
            )
            await stack.enter_async_context(service)
        while live():
            try:
                found = list(settings.seeds)
                probes = [
                    probe(settings.peer_port, timeout=settings.probe_s, interface=iface)
                    for iface in settings.multicast_interfaces
                ]
                for result in await asyncio.gather(*probes, return_exceptions=True):
                    if isinstance(result, ProbeError):
                        log.info("multicast discovery: %s", result)
                    elif isinstance(result, list):
                        found.extend(result)
                if browser is not None:
                    found.extend(browser.candidates())
                fetches = [fetch(e) for e in dict.fromkeys(found) if e != own]
                await asyncio.gather(*(f for f in fetches if f is not None), return_exceptions=True)
            finally:
                first_done.set()
            if browser is None:
                await asyncio.sleep(settings.rediscover_s)
            else:
                await browser.changed(settings.rediscover_s)
