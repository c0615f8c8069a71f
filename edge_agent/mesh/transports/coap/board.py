"""Fetching members' presence boards (``GET /hearth/presence``), bounded against whoever says hello.

A hello, a discovery answer or a first handshake names an address; the board there is fetched block by
block (never more than a frame: aiocoap's own block-wise client would assemble whatever a peer keeps
sending), at most one fetch per address at a time, none again within ``min_fetch_interval_s``, at most
``max_fetches`` in all. What comes back is handed on unread but for the board it claims; the node
verifies it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import aiocoap
from aiocoap import GET, Message
from aiocoap.message import UndecidedRemote
from aiocoap.optiontypes import BlockOption

from edge_agent.errors import TransportError
from edge_agent.mesh.envelope import MIN_FRAME
from edge_agent.mesh.interfaces import Announcement
from edge_agent.mesh.settings import CoapSettings
from edge_agent.mesh.transports.coap.asking import ask
from edge_agent.mesh.transports.coap.book import Endpoint, hostinfo
from edge_agent.mesh.transports.coap.quirks import Tuning
from edge_agent.mesh.transports.coap.resources import PRESENCE

__all__ = ["BoardFetches"]

log = logging.getLogger(__name__)

_BLOCK_EXP = 6  # 1024-byte blocks


class BoardFetches:
    def __init__(
        self,
        settings: CoapSettings,
        context: Callable[[], aiocoap.Context],
        max_frame: int,
        put: Callable[[Announcement], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        dropped: Counter[str],
    ) -> None:
        self.settings = settings
        self.context = context
        """The open transport's context (raises TransportError once it is closed)."""
        self.max_frame = max_frame
        self.put = put
        self.spawn = spawn
        self.dropped = dropped
        self._fetching: set[Endpoint] = set()
        self._fetched_at: dict[Endpoint, float] = {}

    def heard(self, source: Endpoint) -> asyncio.Task[None] | None:
        """Fetch the board at ``source``, unless one fetch from there is under way, it was fetched very
        lately, or too many are under way (a flood of hellos costs one fetch each at most). Returns the
        fetch, if one started."""
        now = time.monotonic()
        if (
            source in self._fetching
            or now - self._fetched_at.get(source, -1e9) < self.settings.min_fetch_interval_s
            or len(self._fetching) >= self.settings.max_fetches
        ):
            self.dropped["HelloIgnored"] += 1
            return None
        if len(self._fetched_at) >= 4 * self.settings.max_fetches:
            cutoff = now - self.settings.min_fetch_interval_s
            self._fetched_at = {k: t for k, t in self._fetched_at.items() if t >= cutoff}
        self._fetched_at[source] = now
        self._fetching.add(source)
        return self.spawn(self._fetch(source))

    async def _fetch(self, source: Endpoint) -> None:
        try:
            frame = await self.fetch(source, PRESENCE)
        except (TransportError, TimeoutError) as exc:
            log.debug("no presence from %s: %s", hostinfo(source), exc)
            return
        finally:
            self._fetching.discard(source)
        if len(frame) < MIN_FRAME:
            self.dropped["ShortFrame"] += 1
            return
        # The board it claims (the sender id in the envelope's header); the node checks it is so. A
        # fetched board is what MQTT calls retained: fetched again unchanged, it is no replay attack.
        self.put(Announcement(frame[4:20].hex(), frame, retained=True))

    async def fetch(self, endpoint: Endpoint, path: tuple[str, ...]) -> bytes:
        """GET ``path`` from ``endpoint`` block by block: each block within ``fetch_timeout_s`` (a lost
        one is resent meanwhile), all of them within ``request_timeout_s``, never more than
        ``max_frame`` bytes. Raises TransportError, TimeoutError."""
        body = bytearray()
        number = 0
        end = time.monotonic() + self.settings.request_timeout_s
        while True:
            request = Message(code=GET, transport_tuning=Tuning())
            request.remote = UndecidedRemote("coap", hostinfo(endpoint))
            request.opt.uri_path = path
            request.opt.block2 = BlockOption.BlockwiseTuple(number, False, _BLOCK_EXP)
            left = min(self.settings.fetch_timeout_s, end - time.monotonic())
            try:
                response = await ask(self.context(), request, timeout=max(0.0, left))
            except aiocoap.error.Error as exc:
                raise TransportError(f"{hostinfo(endpoint)}: {exc}") from None
            if not response.code.is_successful():
                raise TransportError(f"{hostinfo(endpoint)} answered {response.code}")
            block = response.opt.block2
            if block is not None and block.block_number != number:
                raise TransportError(f"{hostinfo(endpoint)} sent block {block.block_number}, not {number}")
            body += response.payload
            if len(body) > self.max_frame:
                raise TransportError(f"{hostinfo(endpoint)} sent more than {self.max_frame} bytes")
            if block is None or not block.more:
                return bytes(body)
            number += 1
