"""A Hearth CoAP endpoint on DNS-SD (mDNS): `CoapService` advertises one, `CoapBrowser` finds them.

This is the second way to find candidates, next to the CoAP group probe (`discovery.probe`). It helps
on networks that filter 224.0.1.187 but pass mDNS, and it gives the address without a probe. It yields
addresses only: the caller verifies each candidate's signed presence advert over CoAP, so a lying
advert costs one request, and the browser keeps at most ``limit`` candidates.

What goes on the LAN is what any listener may read, so it carries nothing that names the household or
the device. The instance is ``hearth-<tag>._hearth-coap._udp.local.``, where ``tag`` is a short,
non-secret string the caller derives (a hash prefix, say). The TXT records are ``v=1`` and
``hh=<household tag>``, which the browser filters on.

The life cycle is the one `edge_agent.discovery.zeroconf_advert` gives the household advert. That
module sits above the mesh and cannot be imported from here, so this is a small copy written directly
against python-zeroconf. Registration runs in the background. A LAN without multicast (or no
python-zeroconf, which the ``agent`` extra brings) logs one warning, and the owner runs on without it.
Exit says goodbye (TTL 0).

python-zeroconf is imported lazily: the mesh library installs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

__all__ = ["SERVICE_TYPE", "CoapBrowser", "CoapService", "DnssdState"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_hearth-coap._udp.local."
TXT_VERSION = "1"
CLOSE_S = 5.0
"""Longest the goodbye (three TTL-0 sends, 125 ms apart) and socket teardown may take at exit."""
RESOLVE_MS = 3000
"""How long the browser waits for one instance's SRV, TXT and addresses."""

_TAG = re.compile(r"[0-9a-z]{1,32}")


class DnssdState(enum.Enum):
    UNOPENED = "unopened"
    STARTING = "starting"
    """Service: probing the LAN for the name, then announcing. Browser: opening the mDNS sockets."""
    RUNNING = "running"
    """Advertising, or browsing."""
    FAILED = "failed"
    """Could not run (one warning logged); the owner runs on without it."""
    CLOSED = "closed"


def _check_tag(what: str, tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise ValueError(f"{what} must be 1 to 32 of 0-9 a-z, not {tag!r}")
    return tag


def _why(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return "python-zeroconf is not installed (it comes with hearth-edge[agent])"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Lifecycle:
    """The state and the non-reentrancy both classes share."""

    what = ""

    def __init__(self) -> None:
        self.state = DnssdState.UNOPENED
        self.reason = ""
        """Why it is not running (FAILED), for logs and diagnostics."""
        self._zc: AsyncZeroconf | None = None
        self._settled = asyncio.Event()

    def _opening(self) -> None:
        if self.state is not DnssdState.UNOPENED:
            raise RuntimeError(f"this {self.what} is {self.state.value}; make a new one")
        self.state = DnssdState.STARTING

    def _failed(self, exc: BaseException) -> None:
        self.state, self.reason = DnssdState.FAILED, _why(exc)
        log.warning("no %s on the LAN (zeroconf): %s", self.what, self.reason)

    async def settled(self) -> DnssdState:
        """Wait until it runs, has failed, or is closed; the state then."""
        await self._settled.wait()
        return self.state

    async def _close_zeroconf(self) -> None:
        """Goodbye (TTL 0) for anything registered, then the sockets; bounded."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            async with asyncio.timeout(CLOSE_S):
                await zc.async_close()
        except (TimeoutError, OSError) as exc:
            log.warning("zeroconf close incomplete (%s); what was advertised expires on its own TTL", exc)


class CoapService(_Lifecycle):
    """An async context manager that advertises this device's CoAP endpoint while it is open.

    Registration runs in the background, so ``async with`` never waits for mDNS probing (use `settled`).
    ``tag`` names the instance and its host, and ``household_tag`` goes in TXT ``hh``. Both are
    non-secret strings the caller derives, 1 to 32 of ``0-9a-z``. ``addresses`` are this host's IP
    literals for the A/AAAA records, and mDNS is bound to the interfaces that hold them."""

    what = "CoAP endpoint advert"

    def __init__(self, *, tag: str, household_tag: str, addresses: Sequence[str], port: int) -> None:
        super().__init__()
        self.tag = _check_tag("tag", tag)
        self.household_tag = _check_tag("household_tag", household_tag)
        self.addresses = [str(ipaddress.ip_address(a)) for a in addresses]
        if not self.addresses:
            raise ValueError("at least one address to advertise")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        self.port = port
        self.name = f"hearth-{tag}.{SERVICE_TYPE}"
        self.info: AsyncServiceInfo | None = None
        """What is advertised, once registered."""
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._opening()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._advertise(), name=f"coap-dnssd-{self.tag}")
        return self

    async def _advertise(self) -> None:
        try:
            from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

            _check_held(self.addresses)
            info = AsyncServiceInfo(
                SERVICE_TYPE,
                self.name,
                port=self.port,
                properties={"v": TXT_VERSION, "hh": self.household_tag},
                server=f"hearth-{self.tag}.local.",
                addresses=self.addresses,
            )
            self._zc = AsyncZeroconf(interfaces=list(self.addresses))
            announced = await self._zc.async_register_service(info)
            await announced
        except Exception as exc:  # advertising is best effort: whatever failed, the owner runs on
            self._failed(exc)
            await self._close_zeroconf()
        else:
            self.info, self.state = info, DnssdState.RUNNING
            log.info("advertising %s at %s port %d", self.name, ", ".join(self.addresses), self.port)
        finally:
            self._settled.set()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state is DnssdState.CLOSED:
            return
        if self._group is not None:
            group, self._group = self._group, None
            if self._task is not None:
                self._task.cancel()  # a no-op once registered; mid-probe, it stops there
            await group.__aexit__(None, None, None)
        await self._close_zeroconf()
        self.state = DnssdState.CLOSED
        self._settled.set()


class CoapBrowser(_Lifecycle):
    """An async context manager that browses `SERVICE_TYPE` while it is open and keeps the (host, port)
    candidates whose TXT ``hh`` is ``household_tag``: at most ``limit`` of them, and hosts are IP literals
    only.

    Addresses come from the instance's own mDNS answers (SRV, then A/AAAA); nothing is looked up through
    the system resolver. An IPv6 link-local host carries its zone (``fe80::1%eth0``). ``interfaces`` are
    local IP addresses to bind mDNS to (default: every interface)."""

    what = "CoAP endpoint browser"

    def __init__(
        self, household_tag: str, *, interfaces: Sequence[str] | None = None, limit: int = 64
    ) -> None:
        super().__init__()
        self.household_tag = _check_tag("household_tag", household_tag)
        self.interfaces = None if interfaces is None else [str(ipaddress.ip_address(a)) for a in interfaces]
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._found: dict[str, list[tuple[str, int]]] = {}  # instance name -> its candidates
        self._changed = asyncio.Event()
        self._browser: AsyncServiceBrowser | None = None
        self._group: asyncio.TaskGroup | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}

    def candidates(self) -> list[tuple[str, int]]:
        """Every candidate now, in the order they were found, each once."""
        return list(dict.fromkeys(c for found in self._found.values() for c in found))

    async def changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the candidates to change (or to have changed since the last
        call); whether they did."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    async def __aenter__(self) -> Self:
        self._opening()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        try:
            from zeroconf import InterfaceChoice
            from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

            self._zc = AsyncZeroconf(
                interfaces=InterfaceChoice.All if self.interfaces is None else self.interfaces
            )
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        except Exception as exc:  # browsing is best effort: no candidates from here, the owner runs on
            self._failed(exc)
            await self._close_zeroconf()
        else:
            self.state = DnssdState.RUNNING
        self._settled.set()
        return self

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """python-zeroconf's handler (called on the loop, by keyword)."""
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            self._drop(name)
            return
        if self._group is None or name in self._resolving:
            return
        if name not in self._found and len(self._found) + len(self._resolving) >= self.limit:
            log.debug("browser: ignoring %s, already %d instances", name, self.limit)
            return
        task = self._group.create_task(self._resolve(zeroconf, name), name="coap-dnssd-resolve")
        self._resolving[name] = task
        task.add_done_callback(lambda _: self._resolving.pop(name, None))

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(zeroconf, RESOLVE_MS):
                log.debug("browser: %s did not resolve", name)
                return
            properties = info.properties
            if properties.get(b"hh") != self.household_tag.encode() or properties.get(b"v") != b"1":
                log.debug("browser: %s is not this household's (or not TXT v=1)", name)
                self._drop(name)
                return
            port = info.port
            found = [(host, port) for a in info.parsed_scoped_addresses() if port and (host := _host(a))]
        except Exception as exc:  # a hostile or broken advert: this instance yields nothing
            log.debug("browser: %s: %s", name, _why(exc))
            return
        room = self.limit - sum(len(v) for k, v in self._found.items() if k != name)
        found = found[: max(room, 0)]
        if found and found != self._found.get(name):
            self._found[name] = found
            self._changed.set()
        elif not found:
            self._drop(name)

    def _drop(self, name: str) -> None:
        if self._found.pop(name, None):
            self._changed.set()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state is DnssdState.CLOSED:
            return
        if self._browser is not None:
            browser, self._browser = self._browser, None
            await browser.async_cancel()
        if self._group is not None:
            group, self._group = self._group, None
            for task in list(self._resolving.values()):
                task.cancel()
            await group.__aexit__(None, None, None)
        await self._close_zeroconf()
        self.state = DnssdState.CLOSED
        self._settled.set()


def _check_held(addresses: Sequence[str]) -> None:
    """Raise OSError naming an IPv4 address this host does not hold. python-zeroconf would fail there too,
    but only after it has opened (and then leaked) its listening socket. An IPv6 address it maps to an
    interface itself, before opening anything."""
    for address in addresses:
        if ipaddress.ip_address(address).version != 4:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError as exc:
                raise OSError(
                    exc.errno, f"{address} is not an address of this host ({exc.strerror})"
                ) from None


def _host(address: str) -> str | None:
    """An address as python-zeroconf prints it (a link-local one with ``%<index>``) as an IP literal with
    the zone named, as aiocoap and `discovery.probe` write it; None if unusable."""
    text, _, zone = address.partition("%")
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(text)
        if ip.version == 6 and ip.is_link_local:
            if not zone:
                return None
            with contextlib.suppress(OSError, ValueError):
                return f"{ip}%{socket.if_indextoname(int(zone)) if zone.isdigit() else zone}"
            return None
        if ip.is_unspecified or ip.is_multicast:
            return None
        return str(ip)
    return None
