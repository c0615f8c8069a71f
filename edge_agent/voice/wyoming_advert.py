"""The Wyoming server on the LAN over zeroconf, so Home Assistant offers to add it.

`WyomingAdvertiser` registers ``<name>._wyoming._tcp.local.`` (what Home Assistant's `wyoming`
integration browses for) at the addresses the server is bound to, and says goodbye (TTL-0 records) when
the server stops. As with the household advert, advertising is a convenience, never a dependency: a LAN
without multicast or a missing python-zeroconf logs one warning and the server runs on.

Who advertises ([voice] wyoming_advertise): "on" always, "off" never, "auto" only when the server is
bound beyond loopback (on loopback only this host could connect, and it needs no invitation).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edge_agent.discovery.advertiser import lan_addresses
from edge_agent.discovery.zeroconf_advert import AdvertiserState, ZeroconfAdvertiser
from edge_agent.voice.settings import WyomingAdvertiseMode

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceInfo


__all__ = [
    "SERVICE_TYPE",
    "AdvertiserState",
    "WyomingAdvertiseMode",
    "WyomingAdvertiser",
    "advert_addresses",
    "instance_label",
    "service_info",
    "should_advertise",
]

SERVICE_TYPE = "_wyoming._tcp.local."
MAX_INSTANCE_BYTES = 63
"""DNS label limit for the instance part (RFC 6763 §4.1.1)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def should_advertise(mode: WyomingAdvertiseMode, host: str) -> bool:
    return mode == "on" or (mode == "auto" and not _is_loopback(host))


def instance_label(name: str) -> str:
    """The instance part of the service name: UTF-8 at most 63 bytes, no control characters, no dots or
    backslashes (other DNS-SD stacks, and Home Assistant's flow title, read those as label separators or
    escapes); "Hearth" when nothing printable is left."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", name.replace(".", "-").replace("\\", "-")))
    clean = " ".join(text.split())
    cut = clean.encode()[:MAX_INSTANCE_BYTES].decode("utf-8", "ignore").rstrip()
    return cut or "Hearth"


def advert_addresses(bound: Sequence[str], lan: Callable[[], list[str]] = lan_addresses) -> list[str]:
    """Where clients reach the server: the addresses its sockets are bound to, an unspecified one standing
    for this host's LAN addresses: 0.0.0.0 its IPv4 ones, :: (dual-stack) all of them (blocking)."""
    out: list[str] = []
    for host in bound:
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if address.is_unspecified:
            out += [a for a in lan() if address.version == 6 or ipaddress.ip_address(a).version == 4]
        else:
            out.append(str(address))
    return list(dict.fromkeys(out))


def service_info(name: str, port: int, addresses: Sequence[str]) -> AsyncServiceInfo:
    """SRV (port, a host name of our own so we never claim the machine's), A/AAAA; no TXT: Home
    Assistant asks the server itself (``describe``) what it offers."""
    from zeroconf.asyncio import AsyncServiceInfo

    label = instance_label(name)
    tag = hashlib.blake2b(f"{label}|{port}|{','.join(addresses)}".encode(), digest_size=4).hexdigest()
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=port,
        server=f"hearth-wyoming-{tag}.local.",
        parsed_addresses=list(addresses),
    )


class WyomingAdvertiser(ZeroconfAdvertiser):
    """Advertises the Wyoming server while open (see `ZeroconfAdvertiser`)."""

    what = "the Wyoming server"
    log = logging.getLogger(__name__)
    task_name = "wyoming-zeroconf"
    allow_name_change = True  # two households' servers may share a name ("Hearth"): ours becomes "-2"

    def __init__(
        self,
        name: str,
        port: int,
        bound: Sequence[str],
        *,
        addresses: Callable[[Sequence[str]], list[str]] = advert_addresses,
    ) -> None:
        super().__init__()
        self.name, self.port, self.bound = name, port, list(bound)
        self._addresses = addresses

    def _prepare(self) -> tuple[AsyncServiceInfo, list[str], str]:
        addresses = self._addresses(self.bound)
        if not addresses:
            raise OSError("this host has no LAN address to advertise (only loopback is up)")
        return service_info(self.name, self.port, addresses), addresses, f", port {self.port}"
