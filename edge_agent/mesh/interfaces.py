"""What every mesh transport provides (MQTT now, CoAP next, an in-memory simulator for tests).

A transport moves opaque frames (sealed envelopes) between devices of one household and reports two
kinds of liveness news, because each transport learns them its own way: *announcements* (a device's
signed presence or signed departure notice: MQTT retained adverts and last will; CoAP later multicast
or zeroconf) and *vanish hints* (the transport believes a device is gone but has nothing signed to show
for it: an emptied retained topic). Security lives above: the node opens and verifies every frame, and
a hint is only a reason to check, never a fact.

A transport is one connection: enter it to connect, ``aclose`` (or exit) to leave cleanly. A
`Connector` makes a new one per (re)connection, carrying the signed departure notice the transport
should leave behind if this device dies (the MQTT last will).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from edge_agent.errors import TransportError

__all__ = [
    "Address",
    "Announcement",
    "Channel",
    "Connector",
    "Incoming",
    "Received",
    "Transport",
    "TransportError",
    "TransportState",
    "Vanished",
]


class Channel(enum.StrEnum):
    """A device's two inboxes (requests to it, responses to it) and the household's presence board."""

    REQUESTS = "req"
    RESPONSES = "resp"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class Address:
    """One device's inbox on one channel. ``str()`` is the logical name every envelope is sealed for,
    so a frame re-routed to another inbox or channel fails to open."""

    household: str
    device: str
    channel: Channel

    def __str__(self) -> str:
        return f"hearth/{self.household}/{self.channel.value}/{self.device}"

    @classmethod
    def parse(cls, name: str) -> Address | None:
        """The address a logical name denotes, or None if it is not one."""
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "hearth":
            return None
        try:
            return cls(parts[1], parts[3], Channel(parts[2]))
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Received:
    """A frame that arrived in one of this device's inboxes."""

    address: Address
    frame: bytes
    retained: bool = False
    """Stored by the broker and replayed: never legitimate in an inbox (dropped, and cleared)."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """A frame on the presence board of ``device``: a signed advert or a signed departure notice."""

    device: str
    frame: bytes
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Vanished:
    """The transport thinks ``device`` left, with nothing signed to prove it: check before believing."""

    device: str


Incoming = Received | Announcement | Vanished


class TransportState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Transport(ABC):
    """One connection of this device to its household's mesh."""

    @abstractmethod
    async def send(self, address: Address, frame: bytes) -> None:
        """Deliver ``frame`` to ``address`` (at least once). Raises TransportError if the link is down."""

    @abstractmethod
    async def announce(self, frame: bytes) -> None:
        """Put this device's signed advert (or departure notice) on the presence board, where current
        and future members see it."""

    @abstractmethod
    def incoming(self) -> AsyncIterator[Incoming]:
        """Everything that arrives for this device. Ends with TransportError when the link drops; safe
        to abandon (the next connection starts a new iterator)."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, subscribe, and arm the departure notice. Raises TransportError on failure."""

    @abstractmethod
    async def aclose(self) -> None:
        """Leave cleanly (the departure notice is not fired; announce one first to leave visibly).
        Idempotent."""

    def abort(self) -> None:  # noqa: B027 - optional for transports that cannot crash on purpose
        """Drop the link as a crash would (tests and benchmarks): the departure notice fires."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Connector(ABC):
    """Makes this device's transport, one per connection."""

    @abstractmethod
    def connect(self, departure_notice: bytes | None) -> Transport:
        """A new, unopened transport; ``departure_notice`` is fired if the link dies (None: no notice,
        e.g. a one-shot client that never announced itself)."""
