"""A hub advertises its household on the LAN over zeroconf, so Home Assistant offers to join it.

`HouseholdAdvertiser` registers ``<name> (<hh[:8]>)._hearth._tcp.local.`` (TXT: see
`edge_agent.mesh.advertisement`) on the interfaces from which others reach the household's broker, and
says goodbye (TTL-0 records) when the agent stops. Advertising is a convenience, never a dependency: a
LAN without multicast, a missing python-zeroconf or a name clash logs one warning and the agent runs on.

Who advertises ([mesh] advertise): "auto" = hub-class devices only (the household's front door; the
class is the one the household root certified), "on" = this device whatever its class, "off" = never.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

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
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from edge_agent.config import MeshSection

log = logging.getLogger(__name__)

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

AdvertiseMode = Literal["auto", "on", "off"]
CLOSE_S = 5.0
"""Longest the goodbye (three TTL-0 sends, 125 ms apart) and socket teardown may take at shutdown."""
_ROUTE_PROBE = ("192.0.2.1", 9)
"""TEST-NET-1 (RFC 5737): which local address the default route uses; no packet is ever sent."""


class AdvertiserState(enum.Enum):
    UNOPENED = "unopened"
    DISABLED = "disabled"
    """Not this device's job: "off", or "auto" on a device that is not hub class."""
    STARTING = "starting"
    """Probing the LAN for the name, then announcing it."""
    ADVERTISING = "advertising"
    FAILED = "failed"
    """Could not advertise (one warning logged); the agent runs on without it."""
    CLOSED = "closed"


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


class HouseholdAdvertiser:
    """An async context manager: advertises while open (registration runs in its task group, so the
    agent's start never waits for mDNS probing), says goodbye on exit."""

    def __init__(
        self,
        source: AdvertSource,
        mode: AdvertiseMode = "auto",
        *,
        view: Callable[[str], LanView] = lan_view,
        loopback_only: bool = False,
    ) -> None:
        self.source, self.mode, self._view = source, mode, view
        self.loopback_only = loopback_only
        """The broker accepts loopback connections only (the embedded broker): nothing to announce."""
        self.state = AdvertiserState.UNOPENED
        self.info: AsyncServiceInfo | None = None
        """What is advertised, once registered."""
        self.reason = ""
        """Why nothing is advertised (DISABLED or FAILED), for logs and diagnostics."""
        self._zc: AsyncZeroconf | None = None
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()

    @classmethod
    def for_mesh(cls, mesh: MeshSection, household_id: str, name: str, device_class: DeviceClass) -> Self:
        """From the agent's [mesh] section and the device's certified name and class."""
        source = AdvertSource(household_id=household_id, device_name=name, device_class=device_class,
                              broker=mesh.broker)  # fmt: skip
        return cls(source, mesh.advertise, loopback_only=mesh.embedded_broker)

    async def __aenter__(self) -> Self:
        if self.state is not AdvertiserState.UNOPENED:
            raise RuntimeError(f"this advertiser is {self.state.value}; make a new one")
        if self.loopback_only and self.mode != "off":
            self.state = AdvertiserState.DISABLED
            self.reason = "the embedded broker listens on loopback only: no LAN device could join through it"
            log.info("not advertising the household over zeroconf: %s", self.reason)
            self._settled.set()
            return self
        if not should_advertise(self.mode, self.source.device_class):
            self.state = AdvertiserState.DISABLED
            self.reason = (
                "[mesh] advertise = off" if self.mode == "off"
                else f'[mesh] advertise = "auto" (hub class only); this device is {self.source.device_class}'
            )  # fmt: skip
            log.debug("not advertising the household over zeroconf: %s", self.reason)
            self._settled.set()
            return self
        self.state = AdvertiserState.STARTING
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._advertise(), name="zeroconf-advertise")
        return self

    async def settled(self) -> AdvertiserState:
        """Wait until advertising has started, failed, or was never to happen; the state then."""
        await self._settled.wait()
        return self.state

    async def _advertise(self) -> None:
        try:
            view = await asyncio.to_thread(self._view, self.source.broker)
            info = service_info(self.source, view)
            from zeroconf.asyncio import AsyncZeroconf

            self._zc = AsyncZeroconf(interfaces=list(view.addresses))
            # No renaming on a clash ("<name> (<hh>)-2" would break the contract): the same name in the
            # same household is a second device of that name, and the first one already answers.
            announced = await self._zc.async_register_service(info, allow_name_change=False)
            await announced
        except Exception as exc:  # advertising is best effort: whatever failed, the agent runs on
            self.state = AdvertiserState.FAILED
            if isinstance(exc, ImportError):
                self.reason = "python-zeroconf is not installed (it comes with hearth-edge[agent])"
            else:
                self.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("not advertising the household on the LAN (zeroconf): %s", self.reason)
            await self._close_zeroconf()
        else:
            self.info, self.state = info, AdvertiserState.ADVERTISING
            log.info("advertising %s on %s (broker %s)", info.name, ", ".join(view.addresses), view.broker)
        finally:
            self._settled.set()

    async def _close_zeroconf(self) -> None:
        """Goodbye (TTL 0) for what was registered, then the sockets; bounded."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            async with asyncio.timeout(CLOSE_S):
                await zc.async_close()
        except (TimeoutError, OSError) as exc:
            log.warning("zeroconf goodbye incomplete (%s); the advert expires on its own TTL", exc)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state is AdvertiserState.CLOSED:
            return
        if self._group is not None:
            group, self._group = self._group, None
            if self._task is not None:
                self._task.cancel()  # a no-op once registered; mid-probe, it stops there
            await group.__aexit__(None, None, None)
        await self._close_zeroconf()
        self.state = AdvertiserState.CLOSED
        self._settled.set()
