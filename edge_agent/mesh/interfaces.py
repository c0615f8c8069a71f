"""What every mesh transport provides (MQTT, CoAP, an in-memory simulator for tests).

A transport moves opaque frames (sealed envelopes) between devices of one household and reports two
kinds of liveness news, because each transport learns them its own way: *announcements* (a device's
signed presence or signed departure notice: MQTT retained adverts and last will; CoAP boards fetched
after hellos, multicast or zeroconf) and *vanish hints* (the transport believes a device is gone but has
nothing signed to show for it: an emptied retained topic, a silent CoAP peer). Security lives above:
the node opens and verifies every frame, and a hint is only a reason to check, never a fact.

A transport is one connection: enter it to connect, ``aclose`` (or exit) to leave cleanly. A
`Connector` makes a new one per (re)connection, carrying the signed departure notice the transport
should leave behind if this device dies (the MQTT last will).
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from edge_agent.errors import TransportError

if TYPE_CHECKING:
    from edge_agent.mesh.peers import Peer
    from edge_agent.mesh.protocol import Chunk, DirectContact
    from edge_agent.tasks import Task

__all__ = [
    "Address",
    "Announcement",
    "BulkPath",
    "Channel",
    "Connector",
    "Incoming",
    "MessagePath",
    "PathEvents",
    "PeerDirectory",
    "Piece",
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
    async def caught_up(self, timeout: float) -> bool:
        """A barrier: True once everything queued for this connection before the call (such as the
        presence board's adverts, delivered on connecting) has come out of `incoming` and been taken
        by its reader; False if that takes over ``timeout`` (or the link drops). Needs a reader."""

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


class PeerDirectory(Protocol):
    """What the router needs from the mesh, and nothing more: who is out there and still a member,
    what this device may ask for, how to reach a peer, and how to learn from the outcome. The
    endpoint implements it; a test can fake it in a few lines."""

    def known(self) -> list[Peer]:
        """Every peer heard from recently (the router explains why it skips silent or revoked ones)."""
        ...

    def is_member(self, device_id: str) -> bool:
        """Whether ``device_id`` holds a valid, unrevoked certificate right now."""
        ...

    def own_requests(self) -> list[Task]:
        """Tasks this device's certificate allows it to request from peers."""
        ...

    def ban(self, device_id: str, seconds: float) -> None: ...

    def succeeded(self, device_id: str, units: int = 0, seconds: float = 0.0) -> None: ...

    async def wait_peers_changed(self, timeout: float) -> bool: ...

    async def wait_connected(self, timeout: float) -> None: ...

    async def wait_for_presence(self, device_id: str, timeout: float, since: float | None = None) -> bool: ...

    def stream(
        self, peer: Peer, task: Task, body: dict[str, Any], *, deadline_s: float, stall_s: float
    ) -> AsyncGenerator[Chunk, None]: ...


@dataclass(frozen=True, slots=True)
class Piece:
    """One piece of bulk data asked of one member: ``resource`` names what (a model update's content
    id), ``index`` which piece of it (a chunk), ``max_length`` the most bytes that may come back (the
    signed chunk length; a path that can, refuses a longer answer before reading it)."""

    resource: str
    index: int
    max_length: int


class BulkPath(Protocol):
    """One way to fetch bulk data from a member, below the exchange that wants it (as httpx keeps a
    one-method transport under its client). Two today: direct TLS links (`mesh.direct.DirectLinks`,
    "direct") and the broker (`mesh.bulk.BrokerPath`, "broker"); `mesh.bulk.BulkPaths` holds them in
    order of preference and is the one place that chooses and falls back. What comes back is
    unverified: the caller checks it against what was signed, whichever path it took.

    Requests and streams have their own sibling, `MessagePath`, implemented by the same links. CoAP
    has no bulk path of its own: the broker path's chunk messages take its OSCORE message path
    (block-wise) when the holder answers CoAP.
    """

    @property
    def name(self) -> str:
        """What received bytes are counted under ("direct", "broker", ...)."""
        ...

    def reaches(self, peer: Peer) -> bool:
        """Worth trying for ``peer`` now (it announces a contact this path may use, and has not failed
        lately). Cheap, no IO."""
        ...

    async def fetch(
        self, peer: Peer, piece: Piece, *, timeout: float, sent: asyncio.Event | None = None
    ) -> bytes:
        """``piece`` from ``peer``. Raises DirectRefusedError if the peer answered that it does not hold
        it (ask another holder), DirectLinkError if this path failed (the next path is tried),
        TimeoutError if no answer came within ``timeout``, a PeerError if what came is no piece at
        all, TransportError or RecipientNotMemberError if the ask could not be sent. ``sent`` is set
        once the ask has left this device as far as this path paces asks (the caller asks for more
        only then)."""
        ...


class PathEvents(Protocol):
    """Who hears what a message path carries (the endpoint's message layer)."""

    def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
        """A message from ``device_id`` (a member, proven by the path) to our ``channel`` inbox."""
        ...

    def link_down(self, device_id: str) -> None:
        """The path's link with ``device_id`` closed after carrying messages: what was on it is lost."""
        ...


class MessagePath(Protocol):
    """Another way than the broker to move mesh messages (requests, chunks, cancels, pings) between two
    members, chosen per message by the endpoint's exchanges before the broker (which always works).
    Two: CoAP with OSCORE (`mesh.transports.coap.CoapLinks`, "coap") and direct TLS links
    (`mesh.direct.DirectLinks`, "direct"). What it carries is the same padded message the broker path
    would seal, checked on arrival by the same message layer."""

    @property
    def name(self) -> str: ...

    def carries(self, device_id: str, contact: DirectContact | None) -> bool:
        """Worth trying for ``device_id`` now (a link is up, or its contact may be tried). No IO."""
        ...

    async def send_message(
        self, device_id: str, contact: DirectContact | None, channel: Channel, payload: bytes, *, session: str
    ) -> None:
        """Deliver one message to the run ``session`` of ``device_id``; raises DirectLinkError if this
        path failed (the next path, or the transport, takes it)."""
        ...

    def give_up_on(self, device_id: str) -> None:
        """A stream on this path went silent: stop using it for ``device_id`` for a while."""
        ...

    def carry(self, events: PathEvents | None) -> None:
        """Hand what arrives to ``events`` from now on (None: stop carrying)."""
        ...
