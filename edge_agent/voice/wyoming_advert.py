"""The Wyoming server on the LAN over zeroconf, so Home Assistant offers to add it.

`WyomingAdvertiser` registers ``<name>._wyoming._tcp.local.`` (what Home Assistant's `wyoming`
integration browses for) at the addresses the server is bound to, and says goodbye (TTL-0 records) when
the server stops. As with the household advert, advertising is a convenience, never a dependency: a LAN
without multicast or a missing python-zeroconf logs one warning and the server runs on.

Who advertises ([voice] wyoming_advertise): "on" always, "off" never, "auto" only when the server is
bound beyond loopback (on loopback only this host could connect, and it needs no invitation).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from edge_agent.discovery.advertiser import AdvertiserState, lan_addresses

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

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
WyomingAdvertiseMode = Literal["auto", "on", "off"]
MAX_INSTANCE_BYTES = 63
"""DNS label limit for the instance part (RFC 6763 §4.1.1)."""
CLOSE_S = 5.0
"""Longest the goodbye (three TTL-0 sends, 125 ms apart) and socket teardown may take at shutdown."""
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


class WyomingAdvertiser:
    """An async context manager: advertises while open (registration runs in its task group, so the
    server's start never waits for mDNS probing), says goodbye on exit."""

    def __init__(
        self,
        name: str,
        port: int,
        bound: Sequence[str],
        *,
        addresses: Callable[[Sequence[str]], list[str]] = advert_addresses,
    ) -> None:
        self.name, self.port, self.bound = name, port, list(bound)
        self._addresses = addresses
        self.state = AdvertiserState.UNOPENED
        self.info: AsyncServiceInfo | None = None
        """What is advertised, once registered (the name may carry a "-2" if another server had ours)."""
        self.reason = ""
        """Why nothing is advertised (FAILED), for logs and diagnostics."""
        self._zc: AsyncZeroconf | None = None
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()

    async def __aenter__(self) -> Self:
        if self.state is not AdvertiserState.UNOPENED:
            raise RuntimeError(f"this advertiser is {self.state.value}; make a new one")
        self.state = AdvertiserState.STARTING
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._advertise(), name="wyoming-zeroconf")
        return self

    async def settled(self) -> AdvertiserState:
        """Wait until advertising has started or failed; the state then."""
        await self._settled.wait()
        return self.state

    async def _advertise(self) -> None:
        try:
            addresses = await asyncio.to_thread(self._addresses, self.bound)
            if not addresses:
                raise OSError("this host has no LAN address to advertise (only loopback is up)")
            info = service_info(self.name, self.port, addresses)
            from zeroconf.asyncio import AsyncZeroconf

            self._zc = AsyncZeroconf(interfaces=addresses)
            # Two households' servers may share a name ("Hearth"): python-zeroconf then renames ours.
            announced = await self._zc.async_register_service(info, allow_name_change=True)
            await announced
        except Exception as exc:  # advertising is best effort: whatever failed, the server runs on
            self.state = AdvertiserState.FAILED
            if isinstance(exc, ImportError):
                self.reason = "python-zeroconf is not installed (it comes with hearth-edge[agent])"
            else:
                self.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("not advertising the Wyoming server on the LAN (zeroconf): %s", self.reason)
            await self._close_zeroconf()
        else:
            self.info, self.state = info, AdvertiserState.ADVERTISING
            log.info("advertising %s on %s, port %d", info.name, ", ".join(addresses), self.port)
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
