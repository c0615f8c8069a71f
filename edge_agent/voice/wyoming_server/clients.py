"""Who is calling: a client's address as the allow-list names it, the allow-list check, and a refusal
log that a flood cannot turn into a flood of lines.

Wyoming has no authentication, by design (a trusted LAN), and Home Assistant's client sends no secret,
so the lock is the client's address (``[voice] wyoming_allow``; loopback by default).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence

from edge_agent.voice.settings import LOOPBACK

__all__ = ["LOOPBACK", "Address", "Network", "RefusalLog", "allowed", "peer_address", "peer_name"]

log = logging.getLogger("edge_agent.voice.wyoming_server")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSAL_LOG_S = 60.0
"""A refused address is logged at most once per this many seconds (a flood writes no flood of lines)."""


def peer_address(writer: asyncio.StreamWriter) -> tuple[str, Address | None]:
    """The client's address (an IPv4-mapped IPv6 one as IPv4, as the allow-list names it)."""
    peer = writer.get_extra_info("peername")
    if not (isinstance(peer, tuple) and peer):
        return "client", None
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0]), None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), address


def peer_name(writer: asyncio.StreamWriter) -> str:
    """``host:port`` for log lines (``[v6]:port``)."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return "client"


def allowed(address: Address | None, allow: Sequence[Network]) -> bool:
    """An address we could not read is never allowed."""
    return address is not None and any(address in net for net in allow)


class RefusalLog:
    """Warns of a refused address at most once per ``REFUSAL_LOG_S``."""

    def __init__(self, max_hosts: int = 256) -> None:
        """``max_hosts``: addresses remembered; past it the memory starts afresh (bounded, whoever floods)."""
        self.max_hosts = max_hosts
        self._last: dict[str, float] = {}

    def warn(self, host: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(host, -REFUSAL_LOG_S) < REFUSAL_LOG_S:
            return
        if len(self._last) >= self.max_hosts:
            self._last.clear()
        self._last[host] = now
        log.warning("%s", text)
