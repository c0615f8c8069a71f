"""The one role a mesh transport plays: move opaque frames between topics. Security lives above it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from edge_agent.errors import HearthError


class TransportError(HearthError):
    """The link to the broker is down (or never came up); the endpoint reconnects."""


@dataclass(frozen=True)
class Frame:
    topic: str
    payload: bytes
    retained: bool = False


class Transport(ABC):
    """An async context manager: connect on enter, disconnect on exit."""

    @abstractmethod
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...

    @abstractmethod
    async def subscribe(self, pattern: str) -> None: ...

    @abstractmethod
    def frames(self) -> AsyncIterator[Frame]:
        """Incoming frames on subscribed topics; ends with an error when the connection is lost."""

    @abstractmethod
    async def __aenter__(self) -> Transport: ...

    @abstractmethod
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
