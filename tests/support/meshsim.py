"""An in-memory household for protocol, routing and attack tests: real nodes, endpoints and crypto on
the MeshSimulator transport, no broker, no packs. Milliseconds per test."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from edge_agent.mesh.assembly import MemberKeys, build_member
from edge_agent.mesh.endpoint import MeshEndpoint
from edge_agent.mesh.household import DeviceCertificate, HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Connector
from edge_agent.mesh.node import GroupKeys, MeshNode
from edge_agent.mesh.protocol import Chunk, DirectContact, Offer, Presence, Request
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.transports.memory import MeshSimulator
from edge_agent.tasks import TASKS, DeviceClass, Task


async def words_handler(req: Request, requester: DeviceCertificate) -> AsyncGenerator[Chunk, None]:
    """Serves a test task: one chunk per word of ``body['words']``, then a final chunk with the count.
    ``body['gate']`` (a key of GATES) makes it wait for the test before each word."""
    words = list(req.body.get("words", []))
    gate = GATES.get(str(req.body.get("gate", "")))
    for word in words:
        if gate is not None:
            await gate.get()
        yield Chunk(id=req.id, seq=0, text=word, token_ids=[len(word)])
    if req.body.get("fail"):
        raise RuntimeError("secret internal detail /etc/hearth/key")
    yield Chunk(id=req.id, seq=0, final=True, body={"n": len(words)})


GATES: dict[str, asyncio.Queue[None]] = {}


@dataclass
class Device:
    name: str
    identity: DeviceIdentity
    certificate: DeviceCertificate
    node: MeshNode
    endpoint: MeshEndpoint
    offers: list[Offer] = field(default_factory=list)
    interval_s: float = 0.05
    memory: bool = False
    direct: DirectContact | None = None
    corrections: str | None = None
    """Digest of the shared corrections it holds (set by tests that sync them)."""

    @property
    def id(self) -> str:
        return self.identity.device_id


Connect = Callable[[str, str, str], Connector]
"""(household id, device id, connection name) -> that device's connector; the simulator's by default."""


class SimHousehold:
    def __init__(self, tmp: Path, connect: Connect | None = None) -> None:
        self.tmp = tmp
        self.root = HouseholdRoot(SigningKey.generate())
        self.group = secrets.token_bytes(32)
        self.sim = MeshSimulator(self.root.household_id)
        self.connect: Connect = connect or (lambda household, device, name: self.sim.connector(device))
        self.devices: dict[str, Device] = {}
        self.certs: list[DeviceCertificate] = []
        self._made: dict[str, tuple[Any, MeshSettings | None]] = {}
        """How each device was made (its handler and settings), so `restart` makes it again."""
        self._stack = contextlib.AsyncExitStack()

    def device(
        self,
        name: str,
        *,
        serves: list[Task] | None = None,
        requests: list[Task] | None = None,
        device_class: DeviceClass = "appliance",
        admin: bool = False,
        may_correct: bool = False,
        handler: Any = words_handler,
        settings: MeshSettings | None = None,
        offers: list[Offer] | None = None,
        identity: DeviceIdentity | None = None,
    ) -> Device:
        ident = identity or DeviceIdentity.generate()
        cert = self.root.issue(
            ident,
            name=name,
            profile="hub",
            requests=list(TASKS) if requests is None else requests,
            serves=serves or [],
            device_class=device_class,
            admin=admin,
            may_correct=may_correct,
        )
        self.certs.append(cert)
        offered = (
            offers
            if offers is not None
            else [Offer(task=t, pack="test@fp32", rate=100.0, first_ms=1.0) for t in serves or []]
        )
        self._made[name] = (handler if serves else None, settings)
        return self._build(name, ident, cert, offered)

    def _build(
        self, name: str, ident: DeviceIdentity, cert: DeviceCertificate, offers: list[Offer]
    ) -> Device:
        handler, settings = self._made[name]
        dev: Device
        parts = build_member(
            self._keys(ident, cert, name),
            self.connect(self.root.household_id, ident.device_id, name),
            presence=lambda: presence_of(dev),
            handler=handler,
            settings=settings or MeshSettings(presence_interval_s=0.05, coalesce_ms=0),
        )
        dev = Device(name, ident, cert, parts.node, parts.endpoint, offers)
        self.devices[name] = dev
        return dev

    def restart(self, dev: Device) -> Device:
        """``dev``'s next run (close its endpoint first): the same keys and state, a new session, and
        what it served before. Start it with `start`."""
        again = self._build(dev.name, dev.identity, dev.certificate, dev.offers)
        again.interval_s = dev.interval_s
        return again

    def keys_of(self, dev: Device) -> MemberKeys:
        """``dev``'s keys and state directory, as its next start would load them."""
        return self._keys(dev.identity, dev.certificate, dev.name)

    def _keys(self, ident: DeviceIdentity, cert: DeviceCertificate, name: str) -> MemberKeys:
        """A member's keys as pairing would leave them: every certificate issued so far, the group key."""
        membership = Membership(self.root.key.verify_key)
        membership.apply_revocations(self.root.crl)
        for c in self.certs:
            membership.add_certificate(c)
        state = self.tmp / name
        state.mkdir(exist_ok=True, mode=0o700)
        return MemberKeys(ident, cert, membership, GroupKeys(self.group, 0, {}), state)

    def client(self, dev: Device) -> MeshEndpoint:
        """A one-shot client of ``dev``'s device (a `hearth` command on a device whose agent is on the
        mesh): the same identity, its own connection and state, no presence of its own, serves nothing."""
        name = f"{dev.name}-client"
        settings = MeshSettings(presence_interval_s=0.05, coalesce_ms=0)
        connector = self.connect(self.root.household_id, dev.id, name)
        return build_member(
            self._keys(dev.identity, dev.certificate, name), connector, settings=settings
        ).endpoint

    async def start(self, *devices: Device) -> None:
        for dev in devices:
            await self._stack.enter_async_context(dev.endpoint)
            await dev.endpoint.wait_connected(2)
        for dev in devices:
            others = [d.id for d in devices if d is not dev]

            def heard_all(ids: list[str] = others, d: Device = dev) -> bool:
                return all(d.endpoint.peers.get(i) for i in ids)

            assert await dev.endpoint.wait_until(heard_all, 2)

    async def aclose(self) -> None:
        await self._stack.aclose()

    def revoke(self, *devices: Device) -> None:
        """The hub signs a new CRL; every device applies it (as gossip in presence would)."""
        crl = self.root.revoke(*(d.id for d in devices))
        for dev in self.devices.values():
            dev.node.membership.apply_revocations(crl)


def presence_of(dev: Device) -> Presence:
    return Presence(
        certificate=dev.certificate,
        crl=None,
        session=dev.node.session,
        link=dev.endpoint.link,
        profile="hub",
        offers=dev.offers,
        interval_s=dev.interval_s,
        translation_memory=dev.memory,
        direct=dev.direct,
        corrections=dev.corrections,
    )


@contextlib.asynccontextmanager
async def household(tmp: Path, connect: Connect | None = None) -> AsyncIterator[SimHousehold]:
    home = SimHousehold(tmp, connect)
    try:
        yield home
    finally:
        await home.aclose()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition on the event loop (the simulator delivers within a few loop iterations)."""
    end = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > end:
            return False
        await asyncio.sleep(0.005)
    return True
