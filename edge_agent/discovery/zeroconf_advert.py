"""One zeroconf (mDNS/DNS-SD) advert's life: register in the background, say goodbye on exit.

Shared by the household advert (`advertiser.HouseholdAdvertiser`) and the Wyoming server's
(`edge_agent.voice.wyoming_advert.WyomingAdvertiser`); each says only what it advertises and where
(`_prepare`) and, if it may decline, why (`_why_not`). Advertising is a convenience, never a dependency:
a LAN without multicast, a missing python-zeroconf or a name clash logs one warning and the owner runs on.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

CLOSE_S = 5.0
"""Longest the goodbye (three TTL-0 sends, 125 ms apart) and socket teardown may take at shutdown."""


class AdvertiserState(enum.Enum):
    UNOPENED = "unopened"
    DISABLED = "disabled"
    """Not this device's job (the owner's `_why_not` said why)."""
    STARTING = "starting"
    """Probing the LAN for the name, then announcing it."""
    ADVERTISING = "advertising"
    FAILED = "failed"
    """Could not advertise (one warning logged); the owner runs on without it."""
    CLOSED = "closed"


class ZeroconfAdvertiser(ABC):
    """An async context manager: advertises while open (registration runs in its task group, so the
    owner's start never waits for mDNS probing), says goodbye on exit."""

    what: ClassVar[str]
    """For log lines: "the household", "the Wyoming server"."""
    log: ClassVar[logging.Logger]
    """The owner's module logger: the log lines name what advertised, not this base."""
    task_name: ClassVar[str]
    allow_name_change: ClassVar[bool]
    """Whether python-zeroconf may rename ours ("-2") when the name is taken on the LAN."""

    def __init__(self) -> None:
        self.state = AdvertiserState.UNOPENED
        self.info: AsyncServiceInfo | None = None
        """What is advertised, once registered."""
        self.reason = ""
        """Why nothing is advertised (DISABLED or FAILED), for logs and diagnostics."""
        self._zc: AsyncZeroconf | None = None
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()

    def _why_not(self) -> tuple[str, int] | None:
        """(reason, log level) when this owner should not advertise at all; None to go ahead."""
        return None

    @abstractmethod
    def _prepare(self) -> tuple[AsyncServiceInfo, list[str], str]:
        """Blocking (interface listing, resolution): the records, the interfaces to bind mDNS to, and a
        detail for the log line. Raises (OSError, ImportError, ...) when there is nothing to advertise."""

    async def __aenter__(self) -> Self:
        if self.state is not AdvertiserState.UNOPENED:
            raise RuntimeError(f"this advertiser is {self.state.value}; make a new one")
        declined = self._why_not()
        if declined is not None:
            self.state = AdvertiserState.DISABLED
            self.reason, level = declined
            self.log.log(level, "not advertising %s over zeroconf: %s", self.what, self.reason)
            self._settled.set()
            return self
        self.state = AdvertiserState.STARTING
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._advertise(), name=self.task_name)
        return self

    async def settled(self) -> AdvertiserState:
        """Wait until advertising has started, failed, or was never to happen; the state then."""
        await self._settled.wait()
        return self.state

    async def _advertise(self) -> None:
        try:
            info, interfaces, detail = await asyncio.to_thread(self._prepare)
            from zeroconf.asyncio import AsyncZeroconf

            self._zc = AsyncZeroconf(interfaces=interfaces)
            announced = await self._zc.async_register_service(info, allow_name_change=self.allow_name_change)
            await announced
        except Exception as exc:  # advertising is best effort: whatever failed, the owner runs on
            self.state = AdvertiserState.FAILED
            if isinstance(exc, ImportError):
                self.reason = "python-zeroconf is not installed (it comes with hearth-edge[agent])"
            else:
                self.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.log.warning("not advertising %s on the LAN (zeroconf): %s", self.what, self.reason)
            await self._close_zeroconf()
        else:
            self.info, self.state = info, AdvertiserState.ADVERTISING
            self.log.info("advertising %s on %s%s", info.name, ", ".join(interfaces), detail)
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
            self.log.warning("zeroconf goodbye incomplete (%s); the advert expires on its own TTL", exc)

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
