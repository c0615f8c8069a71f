"""A hub advertises its household on the LAN over zeroconf, so Home Assistant offers to join it.

`HouseholdAdvertiser` registers ``<name> (<hh[:8]>)._hearth._tcp.local.`` (TXT: see
`edge_agent.mesh.advertisement`) on the interfaces from which others reach the household's broker, and
says goodbye (TTL-0 records) when the agent stops (the advert's life is `zeroconf_advert`'s: a failure
logs one warning and the agent runs on).

Who advertises ([mesh] advertise): "auto" = hub-class devices only (the household's front door; the
class is the one the household root certified), "on" = this device whatever its class, "off" = never.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.discovery.settings import AdvertiseMode, AdvertSettings
from edge_agent.discovery.zeroconf_advert import AdvertiserState, ZeroconfAdvertiser
from edge_agent.mesh.advertisement import (
    SERVICE_TYPE,
    HouseholdAdvert,
    ascii_name,
    host_label,
    instance_label,
)
from edge_agent.mesh.settings import broker_host_port
from edge_agent.tasks import DeviceClass

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceInfo


__all__ = [
    "AdvertSource",
    "AdvertiseMode",
    "AdvertiserState",
    "HouseholdAdvertiser",
    "LanView",
    "lan_view",
    "service_info",
    "should_advertise",
]

_ROUTE_PROBE = ("192.0.2.1", 9)
"""TEST-NET-1 (RFC 5737): which local address the default route uses; no packet is ever sent."""


class AdvertSource(BaseModel):
    """What this device knows that goes into the advert (typed inputs of `service_info`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    household_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    device_name: str = Field(min_length=1, max_length=64)
    device_class: DeviceClass
    broker: str
    """The broker URL as this agent uses it ([mesh] broker), possibly loopback."""


@dataclass(frozen=True)
class LanView:
    """The broker as the LAN sees it, and the addresses at which this host is advertised."""

    broker: str
    """URL for the TXT: a loopback broker becomes this host's primary LAN address."""
    port: int
    addresses: tuple[str, ...]
    """A/AAAA records, and the interfaces mDNS is bound to (the ones facing the broker's clients)."""


def should_advertise(mode: AdvertiseMode, device_class: DeviceClass) -> bool:
    return mode == "on" or (mode == "auto" and device_class == "hub")


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def lan_addresses() -> list[str]:
    """This host's addresses on up, non-loopback interfaces: IPv4, and IPv6 other than link-local
    (those need a scope to be useful), in the kernel's interface order."""
    import psutil

    up = {name for name, stats in psutil.net_if_stats().items() if stats.isup}
    found: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name not in up:
            continue
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(addr.address.split("%", 1)[0])
            if not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified):
                found.append(str(ip))
    return list(dict.fromkeys(found))


def _towards(host: str, port: int) -> str | None:
    from edge_agent.mesh.direct import local_address_towards

    try:
        return local_address_towards(host, port)
    except OSError:
        return None


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def lan_view(
    broker: str,
    *,
    addresses: Callable[[], list[str]] = lan_addresses,
    towards: Callable[[str, int], str | None] = _towards,
) -> LanView:
    """Where LAN devices reach the broker this agent uses (blocking: interface listing, resolution).

    A broker on this host (loopback or unspecified host: the embedded broker, or a local Mosquitto)
    is advertised at this host's LAN addresses, its URL naming the primary one (the default route's,
    else the first IPv4); a broker elsewhere keeps its URL, and this host is advertised at the address
    it reaches the broker from."""
    scheme = broker.split("://", 1)[0]
    host, port = broker_host_port(broker)
    if not _is_local(host):
        here = towards(host, port)
        if here is None:
            raise OSError(f"no route to the broker {broker}")
        if not ipaddress.ip_address(here).is_loopback:
            return LanView(f"{scheme}://{host}:{port}", port, (here,))
        # the broker's name resolves to this host (Debian's 127.0.1.1): others reach it on the LAN
    lan = addresses()
    if not lan:
        raise OSError("this host has no LAN address (only loopback is up)")
    primary = towards(*_ROUTE_PROBE)
    if primary not in lan:
        primary = next((a for a in lan if ":" not in a), lan[0])
    url_host = _url_host(primary) if _is_local(host) else host
    return LanView(f"{scheme}://{url_host}:{port}", port, (primary, *(a for a in lan if a != primary)))


def service_info(source: AdvertSource, view: LanView) -> AsyncServiceInfo:
    """The DNS-SD records of the advert: instance name, SRV (port = the broker's, target = a host
    name of our own), TXT per the contract, A/AAAA."""
    from zeroconf.asyncio import AsyncServiceInfo

    advert = HouseholdAdvert.model_validate(
        {"hh": source.household_id, "broker": view.broker, "name": ascii_name(source.device_name),
         "class": source.device_class}
    )  # fmt: skip
    label = instance_label(source.device_name, source.household_id)
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=view.port,
        properties=advert.properties(),
        server=host_label(source.household_id, label),
        parsed_addresses=list(view.addresses),
    )


class HouseholdAdvertiser(ZeroconfAdvertiser):
    """Advertises the household while open (see `ZeroconfAdvertiser`)."""

    what = "the household"
    log = logging.getLogger(__name__)
    task_name = "zeroconf-advertise"
    # No renaming on a clash ("<name> (<hh>)-2" would break the contract): the same name in the same
    # household is a second device of that name, and the first one already answers.
    allow_name_change = False

    def __init__(
        self,
        source: AdvertSource,
        mode: AdvertiseMode = "auto",
        *,
        view: Callable[[str], LanView] = lan_view,
        loopback_only: bool = False,
    ) -> None:
        super().__init__()
        self.source, self.mode, self._view = source, mode, view
        self.loopback_only = loopback_only
        """The broker accepts loopback connections only (the embedded broker): nothing to announce."""

    @classmethod
    def for_mesh(
        cls, settings: AdvertSettings, household_id: str, name: str, device_class: DeviceClass
    ) -> Self:
        """From the advert settings (the agent's [mesh]: `MeshSection.advert_settings`) and the device's
        certified name and class."""
        source = AdvertSource(household_id=household_id, device_name=name, device_class=device_class,
                              broker=settings.broker)  # fmt: skip
        return cls(source, settings.mode, loopback_only=settings.loopback_only)

    def _why_not(self) -> tuple[str, int] | None:
        if self.loopback_only and self.mode != "off":
            return (
                "the embedded broker listens on loopback only: no LAN device could join through it",
                logging.INFO,
            )
        if not should_advertise(self.mode, self.source.device_class):
            return (
                "[mesh] advertise = off" if self.mode == "off"
                else f'[mesh] advertise = "auto" (hub class only); this device is {self.source.device_class}',
                logging.DEBUG,
            )  # fmt: skip
        return None

    def _prepare(self) -> tuple[AsyncServiceInfo, list[str], str]:
        view = self._view(self.source.broker)
        return service_info(self.source, view), list(view.addresses), f" (broker {view.broker})"
