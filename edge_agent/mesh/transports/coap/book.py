"""Where each member answers CoAP: learnt only from its verified, signed presence (`CoapContact`).

The transport hears adverts from anyone (a multicast answer, a hello from an address), but it does not
believe an address until the node has opened the advert that names it: a forged advert cannot point a
member's traffic elsewhere. Hosts are taken only as far as they are safe to send to: IP literals (no
name is resolved), not multicast, unspecified or broadcast, on an unprivileged port or CoAP's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import OrderedDict

from edge_agent.mesh.protocol import CoapContact

__all__ = ["COAP_PORT", "AddressBook", "Endpoint", "hostinfo", "usable"]

COAP_PORT = 5683
"""CoAP's registered port (RFC 7252): allowed although below 1024."""

Endpoint = tuple[str, int]
"""A host (IP literal) and UDP port."""


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def usable(contact: CoapContact, *, min_port: int = 1024) -> list[Endpoint]:
    """The endpoints of ``contact`` worth sending to, in its order."""
    if contact.port < min_port and contact.port != COAP_PORT:
        return []
    found: list[Endpoint] = []
    for host in contact.hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if (
            ip.is_multicast
            or ip.is_unspecified
            or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"))
        ):
            continue
        found.append((str(ip), contact.port))
    return found


def hostinfo(endpoint: Endpoint) -> str:
    """``host:port`` as a CoAP URI writes it (IPv6 literals in brackets)."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AddressBook:
    """Device id → the endpoints its latest verified advert names (bounded: least recently heard goes)."""

    def __init__(self, max_devices: int = 1024, *, min_port: int = 1024) -> None:
        self.max_devices = max_devices
        self.min_port = min_port
        self._endpoints: OrderedDict[str, list[Endpoint]] = OrderedDict()
        self._learnt = asyncio.Event()

    def learn(self, device_id: str, contact: CoapContact | None) -> None:
        """What ``device_id``'s verified advert says (None: it does not answer CoAP, or no longer)."""
        endpoints = usable(contact, min_port=self.min_port) if contact is not None else []
        if not endpoints:
            self._endpoints.pop(device_id, None)
            return
        self._endpoints[device_id] = endpoints
        self._endpoints.move_to_end(device_id)
        while len(self._endpoints) > self.max_devices:
            self._endpoints.popitem(last=False)
        self._learnt.set()
        self._learnt = asyncio.Event()

    async def wait_for(self, device_id: str, timeout: float) -> Endpoint | None:
        """Where ``device_id`` answers, waiting up to ``timeout`` for a verified advert to say so."""
        end = time.monotonic() + timeout
        while (found := self.endpoint(device_id)) is None and (left := end - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._learnt.wait()
        return found

    def forget(self, device_id: str) -> None:
        self._endpoints.pop(device_id, None)

    def endpoint(self, device_id: str) -> Endpoint | None:
        """Where to send to ``device_id`` (its advert's first usable host), None if not over CoAP."""
        endpoints = self._endpoints.get(device_id)
        return endpoints[0] if endpoints else None

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._endpoints

    def devices(self) -> list[str]:
        return list(self._endpoints)

    def all(self) -> list[Endpoint]:
        """Every endpoint of every device (where a new advert is worth a hello)."""
        return [endpoints[0] for endpoints in self._endpoints.values()]
