"""The port a mesh feature plugs into (shared corrections, translation memory, group-key rotation,
model updates): the endpoint implements it, a feature receives it and uses nothing else."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel, MessagePath
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.peers import PeerTable
from edge_agent.mesh.settings import MeshLimits
from edge_agent.supervision import Supervisor

__all__ = ["FeaturePort"]


class FeaturePort(Protocol):
    """What a feature of the endpoint (shared corrections, translation memory, group-key rotation,
    model updates) may use, and nothing more: handlers for its own message types, sending, tasks that
    live as long as the endpoint, presence (watching peers' adverts, adding fields to ours) and the
    peer directory. `MeshEndpoint` implements it; features never reach into the endpoint's layers."""

    @property
    def device_id(self) -> str: ...

    @property
    def node(self) -> MeshNode:
        """This device's keys, membership and group key (what it signs and seals with)."""
        ...

    @property
    def limits(self) -> MeshLimits: ...

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def dropped(self) -> Counter[str]:
        """What peers sent that was refused, by reason (features count their own refusals here)."""
        ...

    @property
    def peers(self) -> PeerTable:
        """The peer directory: every peer heard from recently, with its latest advert."""
        ...

    @property
    def link_up(self) -> bool:
        """Whether this device is connected to the mesh now."""
        ...

    def is_member(self, device_id: str) -> bool: ...

    def session_of(self, device_id: str) -> str | None:
        """The session of ``device_id``'s current run (messages to it are sealed for it), if heard."""
        ...

    def register(self, message_type: type[Any], handler: Callable[[DeviceCertificate, Any], None]) -> None:
        """Route verified direct messages of ``message_type`` to ``handler`` (sender, message)."""
        ...

    async def send(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """Seal and send one message, padded and bounded as every message; raises TransportError,
        RecipientNotMemberError."""
        ...

    async def send_quietly(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """`send`, where a failure only means the peer misses this message (logged at debug level)."""
        ...

    def send_soon(self, device_id: str, channel: Channel, msg: BaseModel, *, session: str) -> None:
        """`send_quietly` in the background, under the endpoint's lifetime."""
        ...

    def carry(self, path: MessagePath) -> Callable[[], None]:
        """Send requests and streams on ``path`` (direct links) before the broker, and take in what it
        carries; returns what stops that."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` until it ends or the endpoint closes; an unexpected failure is counted by the
        supervisor (never lost as an unretrieved task exception)."""
        ...

    def watch_presence(self, hook: Callable[[Opened], None]) -> Callable[[], None]:
        """Call ``hook`` with every verified, fresh advert of a peer; returns what removes it."""
        ...

    def contribute_presence(self, fields: Callable[[], Mapping[str, Any]]) -> Callable[[], None]:
        """Add ``fields()`` (Presence field -> value) to each advert of this device; returns what
        removes it. A contribution that fails is left out of that advert and counted."""
        ...

    async def republish_presence(self) -> None:
        """Announce this device's advert now (its fields changed), if it advertises at all; raises
        TransportError."""
        ...
