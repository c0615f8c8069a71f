"""Which addresses direct links use: where this device listens (the address it reaches the broker
from), which network its peers' contacts must be on, and which of a contact's hosts are safe to try.

Contacts are taken at their word only as far as they are safe to try (issue 21, N4): a host must be an
IP literal (nothing is ever resolved), on this device's own network, on an unprivileged port, so a
member cannot make fetchers probe addresses of its choosing.
"""

from __future__ import annotations

import ipaddress
import socket

from edge_agent.mesh.protocol import DirectContact
from edge_agent.mesh.settings import DirectLimits

__all__ = ["Network", "local_address_towards", "local_network", "source_of", "usable_hosts"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def local_address_towards(host: str, port: int) -> str:
    """The local address this host uses to reach ``host`` (the broker): a peer that reaches the broker
    can reach us there too. No packet is sent (a UDP socket's connect only picks the route)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return str(probe.getsockname()[0])


def _interface_prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    """The prefix length of the interface that holds ``ip`` (None when no interface says)."""
    try:
        import psutil
    except ImportError:  # a client-only install: the default prefix
        return None
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6) or not addr.netmask:
                continue
            try:
                if ipaddress.ip_address(addr.address.split("%", 1)[0]) == ip:
                    return ipaddress.ip_network(f"{ip}/{addr.netmask}", strict=False).prefixlen
            except ValueError:
                continue
    return None


def local_network(address: str) -> Network:
    """The network whose hosts this device may connect to directly: that of the interface holding
    ``address`` (the one it reaches the broker from), never wider than a /16 (IPv4) or /48 (IPv6),
    and a /24 or /64 when no interface says; the loopback network when ``address`` is loopback (the
    broker runs on this host). Raises ValueError if ``address`` is not an IP address."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return ipaddress.ip_network("127.0.0.0/8" if ip.version == 4 else "::1/128")
    widest, default = (16, 24) if ip.version == 4 else (48, 64)
    prefix = _interface_prefix(ip)
    prefix = max(widest, prefix if prefix is not None else default)
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


def usable_hosts(
    contact: DirectContact, network: Network | None, *, min_port: int = DirectLimits().min_port
) -> list[str]:
    """The hosts of ``contact`` worth connecting to: IP literals (a name is never resolved) inside
    ``network``, not its network or broadcast address, on a port of at least ``min_port``; none when
    ``network`` is None (this device does not know its own)."""
    if network is None or contact.port < min_port:
        return []
    usable: list[str] = []
    for host in contact.hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        special = ip.is_multicast or ip.is_unspecified or (ip.is_link_local and not network.is_link_local)
        edges = ip == network.network_address or (ip.version == 4 and ip == network.broadcast_address)
        if ip in network and not special and not (edges and network.num_addresses > 2):
            usable.append(str(ip))
    return usable


def source_of(peername: object) -> str:
    """Who a connection comes from, for the per-source bound: its address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(peername[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
