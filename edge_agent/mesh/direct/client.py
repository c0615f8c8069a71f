"""The asking side of direct links: one link per holder, made on first use and kept; asks in flight on
a link are answered in any order, by id, and mesh messages flow both ways (`carrier`). A holder whose
links fail or time out is left to the broker path for a while, doubling each time
(`DirectLimits.unreachable_s` up to ``max_unreachable_s``)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter

from edge_agent.errors import DirectLinkError, DirectRefusedError, HearthError
from edge_agent.mesh.direct.addresses import Network, usable_hosts
from edge_agent.mesh.direct.carrier import LinkEvents, read_message, send_message
from edge_agent.mesh.direct.frames import Answer, Ask, Hostile, read_frame_or_message, write_frame
from edge_agent.mesh.direct.handshake import connect
from edge_agent.mesh.direct.tls import client_context
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import DirectContact
from edge_agent.mesh.settings import DirectLimits
from edge_agent.supervision import Supervisor

__all__ = ["Link", "LinkClient"]

LOOP = "direct-links"
"""The supervisor's name for direct links: the server's restarts, connections and asks dropped."""


class Link:
    """Our end of one link to a peer: asks in flight, answered in any order by id; messages both ways."""

    def __init__(
        self,
        peer: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        node: MeshNode,
        supervisor: Supervisor,
        max_header_bytes: int,
        events: LinkEvents | None = None,
        fingerprint: str = "",
    ) -> None:
        self.peer = peer
        self.fingerprint = fingerprint
        """The certificate fingerprint of the contact it was made to: that peer run's (a new run of the
        peer announces a new one, and this link is then a dead run's)."""
        self.node = node
        self.dropped = node.dropped
        self.supervisor = supervisor
        self.max_header_bytes = max_header_bytes
        self.events = events
        self.reader, self.writer = reader, writer
        self.pending: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        self.closed = False
        self.carried = False
        """It carried a message (its closing is then news for the endpoint's streams)."""
        self.task = asyncio.create_task(self._read_answers(), name=f"direct-{peer[:8]}")

    async def send_message(self, channel: Channel, payload: bytes) -> None:
        """Raises DirectLinkError if the link is closed or breaks."""
        if self.closed:
            raise DirectLinkError(f"link to {self.peer[:8]} is closed")
        self.carried = True
        try:
            await send_message(self.writer, channel, payload)
        except (ConnectionError, OSError, RuntimeError) as exc:
            self.close(exc)
            raise DirectLinkError(f"link to {self.peer[:8]} broke: {exc or type(exc).__name__}") from None

    async def _read_answers(self) -> None:
        why: BaseException = DirectLinkError(f"link to {self.peer[:8]} closed")
        try:
            while True:
                answer = await read_frame_or_message(self.reader, Answer, self.max_header_bytes)
                if not isinstance(answer, Answer):
                    payload = await read_message(self.node, self.peer, answer, self.reader)
                    if self.events is not None:
                        self.carried = True
                        self.events.message(self.peer, answer.channel, payload)
                    continue
                expected = self.pending.pop(answer.id, None)
                if expected is not None and answer.length > expected[0]:
                    self.pending[answer.id] = expected  # failed with the rest below
                    raise Hostile(f"a {answer.length}-byte answer; the signed chunk is {expected[0]} bytes")
                data = await self.reader.readexactly(answer.length) if answer.length else b""
                if expected is None or expected[1].done():
                    continue  # asked, then given up on: the bytes are read and dropped
                if answer.error is not None:
                    expected[1].set_exception(DirectRefusedError(f"{self.peer[:8]} said: {answer.error}"))
                else:
                    expected[1].set_result(data)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
            why = DirectLinkError(f"link to {self.peer[:8]} broke: {exc or type(exc).__name__}")
        except Hostile as exc:
            self.dropped["DirectLinkRefused"] += 1
            why = DirectLinkError(f"{self.peer[:8]} broke the link's rules: {exc}")
        except Exception as exc:  # a bug a peer's answer triggered: this link ends, counted, nothing else
            self.supervisor.drop(LOOP, type(exc).__name__, exc, f"link to {self.peer[:8]} failed")
            why = DirectLinkError(f"link to {self.peer[:8]} failed: {type(exc).__name__}")
        finally:
            self.close(why)

    def close(self, why: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(why or DirectLinkError(f"link to {self.peer[:8]} closed"))
        self.pending.clear()
        self.writer.close()
        if self.carried and self.events is not None:
            self.events.link_down(self.peer)
        if self.task is not asyncio.current_task():
            self.task.cancel()

    async def ask(self, ask: Ask, max_length: int, timeout: float) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[ask.id] = (max_length, future)
        try:
            await write_frame(self.writer, ask)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:  # a link that went silent (a firewall, a dead route) is no link
            why = DirectLinkError(f"{self.peer[:8]} did not answer within {timeout:g} s")
            self.close(why)
            raise why from None
        except (ConnectionError, OSError) as exc:
            self.close(exc)
            raise DirectLinkError(f"link to {self.peer[:8]} broke: {exc}") from None
        finally:
            self.pending.pop(ask.id, None)


class LinkClient:
    """Links this device made to holders, by device id, and which holders failed it lately."""

    def __init__(
        self, node: MeshNode, network: Network | None, limits: DirectLimits, supervisor: Supervisor
    ) -> None:
        self.node, self.network, self.limits, self.supervisor = node, network, limits, supervisor
        self.links: dict[str, Link] = {}
        self.unreachable: dict[str, float] = {}
        """Holder -> when it may be tried directly again (monotonic)."""
        self._connecting: dict[str, asyncio.Lock] = {}
        self._failures: Counter[str] = Counter()
        """Failed or timed-out links in a row, by holder: each doubles its time on the broker path."""
        self.received: Counter[str] = Counter()
        """Bytes received directly, by peer (what did not cross the broker)."""
        self.events: LinkEvents | None = None
        """Who hears the messages links carry (set by `DirectLinks.carry`)."""
        self._context = client_context()

    def reachable(self, device_id: str, contact: DirectContact) -> bool:
        if not usable_hosts(contact, self.network, min_port=self.limits.min_port):
            return False
        return time.monotonic() >= self.unreachable.get(device_id, 0.0)

    async def ask(
        self, device_id: str, contact: DirectContact, ask: Ask, max_length: int, timeout: float
    ) -> bytes:
        try:
            self.node.membership.member(device_id)  # every outgoing path checks the peer still belongs
        except HearthError as exc:
            raise DirectLinkError(str(exc)) from None
        link = await self._link(device_id, contact)
        try:
            data = await link.ask(ask, max_length, timeout)
        except DirectRefusedError:
            raise
        except DirectLinkError:
            self._give_up_on(device_id)
            raise
        self._failures.pop(device_id, None)
        self.received[device_id] += len(data)
        return data

    def live(self, device_id: str, contact: DirectContact | None = None) -> Link | None:
        """The open link to ``device_id``; with ``contact`` (what its presence announces now), only if
        it was made to that contact: a link to an earlier run of the peer is closed here, not used."""
        link = self.links.get(device_id)
        if link is None or link.closed:
            return None
        if contact is not None and link.fingerprint != contact.tls_sha256:
            link.close(DirectLinkError(f"{device_id[:8]} restarted: its link belongs to its earlier run"))
            return None
        return link

    async def send_message(
        self, device_id: str, contact: DirectContact, channel: Channel, payload: bytes
    ) -> None:
        """On the link to ``device_id`` (made now if need be); raises DirectLinkError (then the peer is
        left to the broker path for a while)."""
        link = await self._link(device_id, contact)
        try:
            await link.send_message(channel, payload)
        except DirectLinkError:
            self._give_up_on(device_id)
            raise

    def give_up_on(self, device_id: str) -> None:
        """The link to ``device_id`` failed a stream (it went silent): close it, use the broker."""
        link = self.links.pop(device_id, None)
        if link is not None:
            link.close(DirectLinkError(f"link to {device_id[:8]} went silent"))
        self._give_up_on(device_id)

    def _give_up_on(self, device_id: str) -> None:
        """Use the broker for this peer for a while (its link failed or went silent): ``unreachable_s``,
        doubled for every failure in a row (a holder whose contact leads nowhere is tried ever less)."""
        if len(self.unreachable) > self.limits.max_unreachable_peers:
            self.unreachable.clear()
            self._failures.clear()
        self._failures[device_id] += 1
        doubled = self.limits.unreachable_s * 2 ** min(self._failures[device_id] - 1, 16)
        self.unreachable[device_id] = time.monotonic() + min(self.limits.max_unreachable_s, doubled)

    async def _link(self, device_id: str, contact: DirectContact) -> Link:
        link = self.live(device_id, contact)
        if link is not None:
            return link
        lock = self._connecting.setdefault(device_id, asyncio.Lock())
        async with lock:
            link = self.live(device_id, contact)
            if link is not None:
                return link
            if time.monotonic() < self.unreachable.get(device_id, 0.0):  # failed while we waited
                raise DirectLinkError(f"no direct link to {device_id[:8]} (failed moments ago)")
            try:
                link = await self._connect(device_id, contact)
            except DirectLinkError:
                self._give_up_on(device_id)
                raise
            self.links[device_id] = link
            return link

    async def _connect(self, device_id: str, contact: DirectContact) -> Link:
        problems: list[str] = []
        hosts = usable_hosts(contact, self.network, min_port=self.limits.min_port)
        if not hosts:
            self.node.dropped["DirectContactRefused"] += 1
            raise DirectLinkError(
                f"no direct link to {device_id[:8]}: its contact names no IP address on {self.network} "
                f"with a port of at least {self.limits.min_port}"
            )
        handshake_s = self.limits.handshake_s
        for host in hosts:
            try:
                async with asyncio.timeout(handshake_s):
                    reader, writer = await connect(
                        self.node, device_id, host, contact, self._context, self.limits
                    )
                return Link(device_id, reader, writer, self.node, self.supervisor,
                            self.limits.max_header_bytes, self.events, contact.tls_sha256)  # fmt: skip
            except asyncio.IncompleteReadError:
                problems.append(f"{host}: closed during the handshake (are we still a member?)")
            except TimeoutError:
                self.node.dropped["DirectConnectTimeout"] += 1
                problems.append(f"{host}: no link within {handshake_s:g} s")
            except (OSError, ssl.SSLError, Hostile) as exc:
                problems.append(f"{host}: {exc or type(exc).__name__}")
        raise DirectLinkError(f"no direct link to {device_id[:8]}: {'; '.join(problems)}")

    def revoked(self, devices: frozenset[str]) -> None:
        for device in devices:
            if (link := self.links.pop(device, None)) is not None:
                link.close(DirectLinkError(f"{device[:8]} has been revoked"))

    def close(self) -> list[asyncio.Task[None]]:
        """Close every link; returns their reader tasks (cancelled) for the caller to await."""
        for link in list(self.links.values()):
            link.close()
        tasks = [link.task for link in self.links.values()]
        self.links.clear()
        return tasks
