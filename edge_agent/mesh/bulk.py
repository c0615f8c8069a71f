"""Bulk data paths (`mesh.interfaces.BulkPath`) and the one place that chooses among them.

`BrokerPath` is the chunk exchange over the broker: a `ChunkRequest` to the holder's inbox, its
`ChunkData` matched by nonce (sender, content id and index must be the ones asked). `BulkPaths` tries
the first path that reaches a peer, falls back to the next when that path fails (a direct link that
cannot be made or broke), and says which one delivered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets

from edge_agent.errors import DirectLinkError, DirectRefusedError, MalformedMessageError
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import BulkPath, Channel, Piece
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import ChunkData, ChunkRequest

__all__ = ["BrokerPath", "BulkPaths"]

log = logging.getLogger(__name__)

MAX_ASKED = 4096
"""Chunk requests remembered for their answers; past it the oldest quarter is forgotten (answers that
never came)."""


class BrokerPath:
    """Chunks through the broker, as every member can: always reaches a peer it has heard from."""

    name = "broker"

    def __init__(self, endpoint: FeaturePort) -> None:
        self.endpoint = endpoint
        self._asked: dict[int, tuple[tuple[str, str, int], asyncio.Future[bytes]]] = {}
        """Nonce -> (holder, content id, index) asked, and who waits for it. An answer that comes after
        its asker gave up is taken and dropped quietly, as one that was asked."""
        endpoint.register(ChunkData, self._chunk)

    def reaches(self, peer: Peer) -> bool:
        return True

    async def fetch(
        self, peer: Peer, piece: Piece, *, timeout: float, sent: asyncio.Event | None = None
    ) -> bytes:
        nonce = secrets.randbits(62)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._asked[nonce] = ((peer.device_id, piece.resource, piece.index), future)
        if len(self._asked) > MAX_ASKED:
            for stale in list(self._asked)[: MAX_ASKED // 4]:
                del self._asked[stale]
        req = ChunkRequest(
            nonce=nonce,
            reply_session=self.endpoint.node.session,
            content_id=piece.resource,
            index=piece.index,
        )
        try:
            await self.endpoint.send(peer.device_id, Channel.REQUESTS, req, session=peer.session)
        finally:  # acknowledged by the broker (QoS 1), or failed: either way the caller may go on
            if sent is not None:
                sent.set()
        async with asyncio.timeout(timeout):
            return await future

    def _chunk(self, sender: DeviceCertificate, msg: ChunkData) -> None:
        asked = self._asked.pop(msg.nonce, None)
        if asked is None or asked[0] != (sender.device_id, msg.content_id, msg.index):
            self.endpoint.dropped["UnaskedChunk"] += 1
            return
        future = asked[1]
        if future.done():
            return
        try:
            future.set_result(base64.b64decode(msg.data, validate=True))
        except ValueError:
            future.set_exception(MalformedMessageError("sent a chunk that is not base64"))


class BulkPaths:
    """The paths to try, in order of preference (direct links first, the broker last)."""

    def __init__(self, *paths: BulkPath) -> None:
        self.paths = paths

    async def fetch(
        self, peer: Peer, piece: Piece, *, timeout: float, sent: asyncio.Event | None = None
    ) -> tuple[str, bytes]:
        """``piece`` from ``peer`` and the name of the path that brought it, by the first path that
        reaches it, then the next whenever one fails as a path. Raises DirectRefusedError (the peer
        does not hold it), and what the last path tried raises (see `BulkPath.fetch`)."""
        failed: DirectLinkError | None = None
        for path in self.paths:
            if not path.reaches(peer):
                continue
            try:
                return path.name, await path.fetch(peer, piece, timeout=timeout, sent=sent)
            except DirectRefusedError:
                raise
            except DirectLinkError as exc:
                log.info("%s path to %s failed (%s); trying the next", path.name, peer.device_id[:8], exc)
                failed = exc
        raise failed or DirectLinkError(f"no path reaches {peer.device_id[:8]}")
