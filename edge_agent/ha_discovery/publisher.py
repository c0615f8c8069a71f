"""Publishes one agent to Home Assistant over MQTT discovery, on its own connection, beside the mesh.

Its own client (its own client id and last will), so nothing here can stall or drop the mesh link:
every publish is bounded, a lost broker is retried with exponential backoff, and any failure stays in
this object's task (logged, then retried). What it keeps right, from other projects' bug trackers:

* availability: the will sets ``offline`` (retained) when the connection dies; a clean stop publishes
  ``offline`` itself, since a clean DISCONNECT fires no will;
* Home Assistant's birth message (``online`` on ``<prefix>/status``) re-sends config, state and
  availability, so devices come back after an HA restart without retained messages (zigbee2mqtt#3740);
* no ghost entities (ESPresense#457): a decommissioned device clears its retained documents with empty
  payloads, members clear those of devices the household revoked, components that disappear are sent
  once more as removals, and the previous run's document is read back from the broker for that;
* if someone else empties this device's config (HA's "delete device", or the hub after a revocation
  this device has not heard of), it stays withdrawn until the agent restarts.

State is published when it changes, and otherwise on a slow heartbeat. What tells when the device is
used (queue depth, request counters, free model RAM; `DeviceState.USAGE`) is sampled once per usage
window of wall-clock time (`DiscoverySettings.usage_interval_s`): the broker learns how busy the device
was per window, never the moment of a request. The connection loop runs under the agent's
`Supervisor`: a bug it hits is counted and logged there, and the loop restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

from edge_agent.errors import TransportError
from edge_agent.ha_discovery.payload import (
    BIRTH_ONLINE,
    OFFLINE,
    ONLINE,
    SAFE_ID,
    STATE_ROOT,
    DeviceDescription,
    DeviceState,
    DiscoveryPayload,
    Topics,
    discovery_payload,
    published_components,
)
from edge_agent.ha_discovery.settings import DiscoverySettings
from edge_agent.mesh.transports.mqtt import Frame, MqttClient
from edge_agent.supervision import Supervisor

log = logging.getLogger(__name__)

Snapshot = Callable[[], tuple[DeviceDescription, DeviceState]]
"""Who the device is and what it reports now (cheap and synchronous: called every interval)."""
ClientFactory = Callable[[str, tuple[str, bytes] | None], MqttClient]
"""A new MQTT client from (client id, last will (topic, payload) or None) with the broker's address
and credentials; one per connection attempt."""

FAREWELL_S = 2.0
"""Longest the ``offline`` of a clean stop may wait for the broker (the will covers a dead link)."""


class PublisherState(enum.Enum):
    UNOPENED = "unopened"
    CONNECTING = "connecting"
    ONLINE = "online"
    WITHDRAWN = "withdrawn"
    """Someone else cleared this device's config: silent until restart."""
    DECOMMISSIONED = "decommissioned"
    CLOSED = "closed"


LOOP = "ha-discovery"


class DiscoveryPublisher:
    def __init__(
        self,
        snapshot: Snapshot,
        connect: ClientFactory,
        settings: DiscoverySettings,
        *,
        supervisor: Supervisor | None = None,
        legacy_ids: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``legacy_ids``: object ids this device was published under before (its device id, before
        discovery ids were keyed): their documents are cleared if the broker still holds them.
        ``clock``: wall-clock seconds, for the usage windows."""
        self.snapshot = snapshot
        self.connect = connect
        self.settings = settings
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.clock = clock
        desc, _ = snapshot()
        self.topics = Topics(prefix=settings.prefix, object_id=desc.object_id)
        self._legacy = {
            Topics(prefix=settings.prefix, object_id=i).config: i for i in legacy_ids if i != desc.object_id
        }
        self.state = PublisherState.UNOPENED
        self.client_id = f"hearth-ha-{desc.object_id[:32]}-{secrets.token_hex(4)}"
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._client: MqttClient | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._online = asyncio.Event()
        self._finished = asyncio.Event()
        self._decommission = False
        self._resend = True
        """Send config, state and availability at the next chance (set at connect and on HA's birth)."""
        self._pending_clears: set[str] = set()
        self._known: dict[str, str] = {}
        """Component id -> platform of every component published (this run, or read back from the
        broker), so one that disappears is sent as a removal."""
        self._last_config: bytes | None = None
        self._last_state: bytes | None = None
        self._state_sent_at = 0.0
        self._usage: tuple[int, DeviceState] | None = None
        """(usage window, the state sampled in it): what the published usage fields come from."""
        self._session_ok = False
        self.published = 0
        """Messages published (for diagnostics and tests)."""

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not PublisherState.UNOPENED:
            raise RuntimeError(f"this discovery publisher is {self.state.value}; make a new one")
        self.state = PublisherState.CONNECTING
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._runner = self._group.create_task(self._run(), name="ha-discovery")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Publish ``offline`` (unless decommissioned) and disconnect; bounded."""
        if self._group is None or self.state is PublisherState.CLOSED:
            return
        self._stop.set()
        self._wake.set()
        assert self._runner is not None
        if self.state is not PublisherState.ONLINE:
            self._runner.cancel()  # nothing to say goodbye on (still connecting, or already done)
        try:
            async with asyncio.timeout(self.settings.io_timeout_s + 1):
                await self._finished.wait()
        except TimeoutError:
            log.warning("Home Assistant discovery: the farewell took too long; dropping the connection")
            self._runner.cancel()
        await self._group.__aexit__(None, None, None)
        self.state = PublisherState.CLOSED

    # -- what the agent calls --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Check the state now instead of at the next interval."""
        self._wake.set()

    def forget(self, object_ids: Iterable[str]) -> None:
        """Clear other devices' retained documents (devices the household revoked)."""
        for object_id in object_ids:
            if object_id == self.topics.object_id:
                self.decommission_soon()
            elif len(self._pending_clears) >= self.settings.max_pending_clears:
                log.warning("Home Assistant discovery: too many devices to clear; skipping %s", object_id)
            elif re.fullmatch(SAFE_ID, object_id):
                self._pending_clears.add(object_id)
            else:  # called from revocation callbacks: log, never raise into the mesh
                log.warning("Home Assistant discovery: %r is not a discovery id; not clearing it", object_id)
        self._wake.set()

    def decommission_soon(self) -> None:
        """This device leaves the household: clear its config, state and availability, then stay silent."""
        self._decommission = True
        self._wake.set()

    async def decommission(self, timeout: float = 10.0) -> None:
        """Like `decommission_soon`, and wait until the broker has taken the empty documents."""
        self.decommission_soon()
        async with asyncio.timeout(timeout):
            await self._finished.wait()
        if self.state is not PublisherState.DECOMMISSIONED:
            raise TransportError("Home Assistant discovery: could not clear this device's config")

    async def wait_online(self, timeout: float) -> None:
        """Until the first connection has published everything (tests, diagnostics)."""
        async with asyncio.timeout(timeout):
            await self._online.wait()

    async def wait_stopped(self, timeout: float) -> None:
        """Until it has stopped for good (decommissioned, withdrawn, or closed)."""
        async with asyncio.timeout(timeout):
            await self._finished.wait()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would (the broker fires the will); the
        publisher then reconnects like after any lost connection."""
        if self._client is not None:
            self._client.abort()

    # -- the connection loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """The connection loop, supervised: a bug is counted, logged and the loop restarted; it never
        takes the agent down."""
        try:
            await self.supervisor.supervise(LOOP, self._connections, stopping=self._stopping)
        finally:
            self._finished.set()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._done()

    async def _connections(self) -> None:
        """Connect, publish, and reconnect with backoff after a lost or failed link (expected)."""
        delay = self.settings.reconnect_min_s
        while not self._stopping():
            self.state = PublisherState.CONNECTING
            try:
                await self._session()
            except (TransportError, TimeoutError, OSError) as exc:
                log.warning("Home Assistant discovery: %s; retrying in %.1f s", exc, delay)
            finally:
                self._client = None
                self._online.clear()
                if not self._done():
                    self.state = PublisherState.CONNECTING
            if self._session_ok:
                delay = self.settings.reconnect_min_s  # it worked: start the backoff over
            if self._stopping():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _done(self) -> bool:
        return self.state in (PublisherState.DECOMMISSIONED, PublisherState.WITHDRAWN)

    async def _session(self) -> None:
        timeout = self.settings.io_timeout_s
        client = self.connect(self.client_id, (self.topics.availability, OFFLINE))
        async with asyncio.timeout(timeout):
            await client.__aenter__()
        self._client = client
        self._session_ok = False
        try:
            async with asyncio.timeout(timeout):
                await client.subscribe(self.topics.birth)
                await client.subscribe(self.topics.config)  # the previous run's document comes back
                for legacy in self._legacy:  # so does a document under an older id, if any
                    await client.subscribe(legacy)
            self._resend = True
            reader = asyncio.create_task(self._read(client), name="ha-discovery-reader")
            reader.add_done_callback(lambda _: self._wake.set())
            try:
                while True:
                    if reader.done():
                        reader.result()  # raises the lost connection
                        raise TransportError("the broker closed the connection")
                    if self._decommission:
                        await self._clear(client, self.topics.object_id)
                        self.state = PublisherState.DECOMMISSIONED
                        log.info("Home Assistant discovery: cleared this device's config")
                        return
                    if self._stop.is_set():  # a dead link must not hold the agent's shutdown up long
                        await self._publish(client, self.topics.availability, OFFLINE, FAREWELL_S)
                        return
                    if self.state is PublisherState.WITHDRAWN:
                        await self._clear(client, self.topics.object_id)  # its state, availability too
                        return
                    self._wake.clear()  # before the tick: a wake-up during it is not lost
                    await self._tick(client)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.interval_s):
                            await self._wake.wait()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, TransportError):
                    await reader
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await client.__aexit__(None, None, None)

    async def _tick(self, client: MqttClient) -> None:
        """Clear what is pending; send what changed (everything after a connect or HA's birth)."""
        for object_id in sorted(self._pending_clears):
            await self._clear(client, object_id)
            self._pending_clears.discard(object_id)
        desc, live = self.snapshot()
        state = self._coarsened(live)
        config = self._config(desc, state)
        resend, self._resend = self._resend, False
        encoded = config.encode()
        if resend or encoded != self._last_config:
            await self._publish(client, self.topics.config, encoded)
            self._last_config = encoded
        body = state.encode()
        now = time.monotonic()
        if resend or body != self._last_state or now - self._state_sent_at >= self.settings.heartbeat_s:
            await self._publish(client, self.topics.state, body)
            self._last_state, self._state_sent_at = body, now
        if resend:
            await self._publish(client, self.topics.availability, ONLINE)
        if self.state is PublisherState.CONNECTING:
            self.state = PublisherState.ONLINE
            log.info("Home Assistant discovery: published %s", self.topics.config)
        self._session_ok = True
        self._online.set()

    def _coarsened(self, live: DeviceState) -> DeviceState:
        """``live`` with the usage fields sampled at the first check of the current usage window."""
        window = int(self.clock() // self.settings.usage_interval_s)
        if self._usage is None or self._usage[0] != window:
            self._usage = (window, live)
        return live.with_usage_of(self._usage[1])

    def _config(self, desc: DeviceDescription, state: DeviceState) -> DiscoveryPayload:
        current = discovery_payload(desc, state, self.topics)
        gone = {k: p for k, p in self._known.items() if k not in current.components}
        for key, component in current.components.items():
            self._known[key] = component.platform
        return discovery_payload(desc, state, self.topics, removed=gone) if gone else current

    async def _read(self, client: MqttClient) -> None:
        async for frame in client.frames():
            with self.supervisor.guard(LOOP, f"dropped a frame on {frame.topic[:80]}"):
                self._received(frame)

    def _received(self, frame: Frame) -> None:
        if frame.topic in self._legacy:
            if frame.payload:
                log.info("Home Assistant discovery: clearing this device's config under its old id")
                self._pending_clears.add(self._legacy[frame.topic])
                self._wake.set()
            return
        if frame.topic == self.topics.birth:
            if frame.payload.strip() == BIRTH_ONLINE:
                log.info("Home Assistant is online: sending the discovery config again")
                self._resend = True
                self._wake.set()
            return
        if frame.topic != self.topics.config or frame.payload == self._last_config:
            return
        if not frame.payload:
            if not self._decommission:
                log.warning(
                    "Home Assistant discovery: this device's config was cleared by someone else (deleted "
                    "in Home Assistant, or revoked by the hub); not publishing it again until restart"
                )
                self.state = PublisherState.WITHDRAWN
                self._wake.set()
            return
        # The previous run's document (or another writer's): remember its components, so the ones this
        # run does not have are sent as removals.
        before = dict(self._known)
        for key, platform in published_components(frame.payload).items():
            self._known.setdefault(key, platform)
        if self._known != before:
            self._last_config = None
            self._wake.set()

    async def _clear(self, client: MqttClient, object_id: str) -> None:
        """Empty retained payloads: HA removes the device and its entities; nothing is left behind."""
        topics = Topics(prefix=self.settings.prefix, object_id=object_id)
        for topic in topics.all_retained():
            await self._publish(client, topic, b"")

    async def _publish(
        self, client: MqttClient, topic: str, payload: bytes, timeout: float | None = None
    ) -> None:
        async with asyncio.timeout(min(timeout or self.settings.io_timeout_s, self.settings.io_timeout_s)):
            await client.publish(topic, payload, retain=True)
        self.published += 1


async def clear_devices(
    connect: ClientFactory,
    object_ids: Iterable[str],
    prefix: str,
    timeout: float = 10.0,
    *,
    if_present: Iterable[str] = (),
) -> None:
    """One-shot: clear the retained discovery documents of ``object_ids`` (e.g. right after
    `hearth household revoke`, when no agent may be running to do it), and those of ``if_present``
    only if the broker holds a config for them (ids that would say something if cleared for nothing:
    a device id, the old discovery id)."""
    topics = [Topics(prefix=prefix, object_id=i) for i in object_ids]  # refuses unsafe ids first
    maybe = {
        Topics(prefix=prefix, object_id=i).config: Topics(prefix=prefix, object_id=i) for i in if_present
    }
    client = connect(f"hearth-ha-clear-{secrets.token_hex(4)}", None)
    async with asyncio.timeout(timeout), client:
        if maybe:
            marker = f"{STATE_ROOT}/clear-{secrets.token_hex(8)}"
            for topic in [*maybe, marker]:
                await client.subscribe(topic)
            await client.publish(marker, b"", retain=False)  # retained configs arrive before it
            async for frame in client.frames():
                if frame.topic == marker:
                    break
                if frame.payload and frame.topic in maybe:
                    topics.append(maybe[frame.topic])
        for device in topics:
            for topic in device.all_retained():
                await client.publish(topic, b"", retain=True)


__all__ = [
    "SAFE_ID",
    "ClientFactory",
    "DiscoveryPublisher",
    "PublisherState",
    "Snapshot",
    "clear_devices",
]
