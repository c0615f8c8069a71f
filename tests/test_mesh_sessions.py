"""Forward-secret sessions (envelope v2, `edge_agent.mesh.sessions`) on the in-memory mesh: the
handshake, forward secrecy against stolen identity files (the review's p18), key-compromise
impersonation, replay (within a run and across restarts), tampering, bounds, rekeying, downgrade and a
mixed v1/v2 household. Each attack asserts the exact refusal, that trusted state is unchanged, and
that the device keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings as sodium
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from edge_agent.errors import (
    ForgedMessageError,
    MalformedMessageError,
    NotAMemberError,
    PeerLostError,
    ReplayError,
    SessionError,
)
from edge_agent.mesh.assembly import build_node
from edge_agent.mesh.envelope import EnvelopeOpener, Opened, seal
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Address, Channel
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.sessions import AES_GCM, CHACHA20_POLY1305, KIND_DATA, KIND_HANDSHAKE, Sessions, kind_of
from edge_agent.mesh.sessions.aead import SessionCipher
from edge_agent.mesh.sessions.credentials import RunCredential, verify_statement
from edge_agent.mesh.sessions.handshake import Initiator, Keys, Responder
from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.sessions.table import SessionTable
from edge_agent.mesh.sessions.wire import HandshakeFrame
from edge_agent.mesh.settings import MeshLimits, MeshSettings, SessionLimits
from edge_agent.mesh.transports.memory import MeshSimulator
from tests.support.meshsim import Device, SimHousehold, household, until

PROMPT = b'{"prompt": "what is on my calendar tomorrow at the clinic?"}'


@dataclass
class Live:
    """A node driven by hand on the simulator: what it opens lands in ``got``."""

    node: MeshNode
    got: asyncio.Queue[Opened] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.node.device_id

    @property
    def sessions(self) -> Sessions:
        assert self.node.sessions is not None
        return self.node.sessions

    async def send(self, to: Live, payload: bytes = PROMPT, channel: Channel = Channel.REQUESTS) -> None:
        await self.node.send(to.id, channel, payload, session=to.node.session)

    async def next(self) -> Opened:
        async with asyncio.timeout(5):
            return await self.got.get()


async def _live(sim: MeshSimulator, node: MeshNode) -> Live:
    live = Live(node)
    transport = sim.connector(node.device_id).connect(None)
    await transport.open()
    node.transport = transport

    async def read() -> None:
        async for item in node.receive(transport):
            if isinstance(item, Opened):
                live.got.put_nowait(item)

    live.task = asyncio.create_task(read())
    return live


async def _stop(*lives: Live) -> None:
    for live in lives:
        if live.task is not None:
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
        if live.node.transport is not None:
            await live.node.transport.aclose()


@contextlib.asynccontextmanager
async def pair(
    tmp: Path, limits: MeshLimits | None = None
) -> AsyncIterator[tuple[SimHousehold, Live, Live, Device, Device]]:
    """A household of a hub and a fridge whose nodes know each other speak v2 (as presence says)."""
    async with household(tmp) as home:
        hub_dev = home.device("hub", serves=["generate"])
        fridge_dev = home.device("fridge")
        hub = await _live(home.sim, _node(home, hub_dev, limits))
        fridge = await _live(home.sim, _node(home, fridge_dev, limits))
        hub.sessions.speaks(fridge.id)
        fridge.sessions.speaks(hub.id)
        try:
            yield home, hub, fridge, hub_dev, fridge_dev
        finally:
            await _stop(hub, fridge)


def _node(home: SimHousehold, dev: Device, limits: MeshLimits | None = None) -> MeshNode:
    """A node with ``dev``'s keys and state (a restart of it: a new run)."""
    return build_node(home.keys_of(dev), limits)


def _frames(home: SimHousehold, kind: int, to: str | None = None) -> list[tuple[str, bytes]]:
    return [(a, f) for a, f in home.sim.wiretap.frames if kind_of(f) == kind and (to is None or to in a)]


def _inject(home: SimHousehold, address: str, frame: bytes) -> None:
    parsed = Address.parse(address)
    assert parsed is not None
    home.sim.inject(parsed, frame)


async def _refused(live: Live, before: dict[str, int], error: type[Exception]) -> None:
    """``live`` dropped one more frame of ``error``'s kind, and nothing else."""
    assert await until(lambda: live.node.dropped[error.__name__] == before.get(error.__name__, 0) + 1)
    assert live.got.empty()


async def test_the_first_message_makes_one_session_and_both_ends_use_it(tmp_path: Path) -> None:
    async with pair(tmp_path) as (home, hub, fridge, *_):
        await fridge.send(hub)
        opened = await hub.next()
        assert (opened.payload, opened.header.version, opened.header.sender) == (PROMPT, 2, fridge.id)
        await hub.send(fridge, b"answer", Channel.RESPONSES)
        assert (await fridge.next()).payload == b"answer"
        # One handshake (three frames), and the answer went back on the session it made.
        assert [HandshakeFrame.parse(f).step for _, f in _frames(home, KIND_HANDSHAKE)] == [1, 2, 3]
        (mine,), (theirs,) = fridge.sessions.sessions_with(hub.id), hub.sessions.sessions_with(fridge.id)
        assert (mine.index, mine.peer_index) == (theirs.peer_index, theirs.index)
        assert (mine.initiator, theirs.initiator, mine.sent, theirs.sent) == (True, False, 1, 1)
        # AES-GCM only when both ends have AES instructions (this CPU decides for both here).
        assert mine.aead == (AES_GCM if fridge.sessions.aes else CHACHA20_POLY1305)
        # 16-byte header + 8-byte time inside + 16-byte tag: 40 bytes around the payload, no ids.
        (_, data), _ = _frames(home, KIND_DATA)
        assert len(data) == len(PROMPT) + 40
        assert bytes.fromhex(fridge.id) not in data and bytes.fromhex(hub.id) not in data


async def test_a_peer_without_aes_instructions_gets_chacha20_poly1305_both_ways(tmp_path: Path) -> None:
    """The AEAD is AES-GCM only when both statements say AES instructions; a fridge panel without them
    (a Cortex-A53 without the crypto extensions) makes both ends use ChaCha20-Poly1305, on any host."""
    async with pair(tmp_path) as (_, hub, fridge, *_):
        fridge.sessions.aes = False  # before its run credential (and statement) is made
        await fridge.send(hub)
        assert (await hub.next()).payload == PROMPT
        await hub.send(fridge, b"answer", Channel.RESPONSES)
        assert (await fridge.next()).payload == b"answer"
        (mine,), (theirs,) = fridge.sessions.sessions_with(hub.id), hub.sessions.sessions_with(fridge.id)
        assert mine.aead == theirs.aead == CHACHA20_POLY1305


async def test_a_recorded_session_cannot_be_opened_with_the_long_term_keys_afterwards(tmp_path: Path) -> None:
    """The review's p18: whoever recorded the broker's traffic later steals both devices' identity
    files (and the household group key). v1 frames open with them; v2 frames do not, by any key those
    files hold, nor by replaying the recorded handshake into a device that holds them."""
    async with pair(tmp_path) as (home, hub, fridge, hub_dev, fridge_dev):
        await fridge.send(hub)
        await hub.next()
        recorded = list(home.sim.wiretap.frames)
        # The same prompt in a v1 envelope (what every device sent before sessions) for the control.
        v1 = seal(fridge_dev.identity, topic="t#s", counter=1, payload=PROMPT, recipient=hub_dev.certificate)
    # After the fact: the attacker holds both identities (signing and box keys) and the group key.
    stolen_hub, stolen_fridge = hub_dev.identity, fridge_dev.identity
    opener = EnvelopeOpener(stolen_hub, hub.node.membership)
    assert opener.open(v1, "t#s").payload == PROMPT  # v1: the stolen file opens the recording (N10)
    pair_key = sodium.crypto_box_beforenm(bytes(stolen_fridge.public_box_key), bytes(stolen_hub.box_key))
    keys = [pair_key, home.group, bytes(stolen_hub.signing_key), bytes(stolen_fridge.signing_key)]
    data = [f for _, f in recorded if kind_of(f) == KIND_DATA]
    assert data and all(PROMPT not in f for _, f in recorded)
    for frame in data:
        nonce, sealed = bytes(4) + frame[8:16], frame[16:]
        for key in keys:
            for aead in (AESGCM(key), ChaCha20Poly1305(key)):
                for aad in (frame[:16], frame[:16] + str(Address.parse(recorded[0][0])).encode()):
                    with pytest.raises(InvalidTag):
                        aead.decrypt(nonce, sealed, aad)
    # Replaying the recorded handshake into a device with the stolen hub identity and the same run:
    # its answer is a new ephemeral key, so the recorded message 3 no longer verifies and no session
    # (nor any key to the recorded data) comes out of it.
    sim = MeshSimulator(home.root.household_id)
    thief = await _live(sim, _node(home, hub_dev))
    thief.node.session = hub.node.session
    try:
        (_, m1), (_, m3) = [(a, f) for a, f in recorded if kind_of(f) == KIND_HANDSHAKE and f[4] in (1, 3)]
        await thief.sessions.handshake(m1)
        (_, answer), = [(a, f) for a, f in sim.wiretap.frames if kind_of(f) == KIND_HANDSHAKE]  # fmt: skip
        recorded_m3 = HandshakeFrame.parse(m3)
        thief_index = HandshakeFrame.parse(answer).responder_index
        m3_for_the_thief = HandshakeFrame(
            3, fridge.id, hub.id, recorded_m3.sender_run, hub.node.session,
            recorded_m3.initiator_index, thief_index, recorded_m3.message,
        )  # fmt: skip
        with pytest.raises(ForgedMessageError, match=r"session handshake with \w+ failed"):
            await thief.sessions.handshake(m3_for_the_thief.pack())
        assert thief.sessions.sessions_with(fridge.id) == []
        for frame in data:
            with pytest.raises(ReplayError, match="no session"):
                thief.sessions.open(frame, recorded[0][0])
    finally:
        await _stop(thief)


async def test_stolen_keys_of_one_device_do_not_let_anyone_pose_as_another_to_it(tmp_path: Path) -> None:
    """Key-compromise impersonation: with the fridge's identity (and its run key), an attacker still
    cannot answer the fridge's handshake as the hub; the fridge makes no session and keeps working."""
    limits = MeshLimits(sessions=SessionLimits(handshake_s=1.0))
    async with pair(tmp_path, limits) as (home, hub, fridge, _, fridge_dev):
        stolen = fridge_dev.identity
        home.sim.drop = lambda address, frame: kind_of(frame) == KIND_HANDSHAKE and f"/{hub.id}" in address
        sending = asyncio.ensure_future(fridge.send(hub))
        assert await until(lambda: len(_frames(home, KIND_HANDSHAKE, hub.id)) == 1)
        (_, m1_frame), *_ = _frames(home, KIND_HANDSHAKE, hub.id)
        m1 = HandshakeFrame.parse(m1_frame)
        # The attacker's own run key, with a statement signed by the key it stole (the fridge's), as
        # the hub: the fridge checks the statement against the hub's certificate.
        forged_credential = RunCredential.make(stolen, home.root.household_id, hub.node.session, aes=False)
        responder = Responder(forged_credential, fridge.id, 77)
        m2 = HandshakeFrame(2, hub.id, fridge.id, hub.node.session, fridge.node.session, m1.initiator_index,
                            77, responder.message_2(m1.message))  # fmt: skip
        before = dict(fridge.node.dropped)
        fridge_inbox = Address(home.root.household_id, fridge.id, Channel.REQUESTS)
        home.sim.inject(fridge_inbox, m2.pack())
        await _refused(fridge, before, ForgedMessageError)
        with pytest.raises(
            SessionError, match=r"refused: the session credential offered as \w+ is not signed"
        ):
            await sending
        assert fridge.sessions.sessions_with(hub.id) == [] and fridge.sessions.pending == 0
        # A genuine message 2 of the hub from another handshake (recorded) does not fit this one.
        home.sim.drop = lambda address, frame: False
        await fridge.send(hub)
        await hub.next()
        (_, genuine_m2), *_ = [(a, f) for a, f in _frames(home, KIND_HANDSHAKE, fridge.id) if f[4] == 2]
        fridge.sessions.forget_runs(hub.id)
        home.sim.drop = lambda address, frame: kind_of(frame) == KIND_HANDSHAKE and f"/{hub.id}" in address
        sending = asyncio.ensure_future(fridge.send(hub))
        assert await until(lambda: fridge.sessions.pending == 1)
        (pending_index,) = fridge.sessions.initiating()
        old = HandshakeFrame.parse(genuine_m2)
        replayed = HandshakeFrame(2, hub.id, fridge.id, hub.node.session, fridge.node.session, pending_index,
                                  old.responder_index, old.message)  # fmt: skip
        before = dict(fridge.node.dropped)
        home.sim.inject(fridge_inbox, replayed.pack())
        await _refused(fridge, before, ForgedMessageError)
        with pytest.raises(SessionError):
            await sending
        assert fridge.sessions.sessions_with(hub.id) == []
        # ... and it still talks to the real hub.
        home.sim.drop = lambda address, frame: False
        await fridge.send(hub)
        assert (await hub.next()).payload == PROMPT


async def test_replayed_tampered_and_unknown_frames_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with pair(tmp_path) as (home, hub, fridge, *_):
        await fridge.send(hub)
        await hub.next()
        (address, frame), = _frames(home, KIND_DATA, hub.id)  # fmt: skip
        (session,) = hub.sessions.sessions_with(fridge.id)
        window = hub.sessions.table.window(session.index)
        (on_fridge,) = fridge.sessions.sessions_with(hub.id)
        fresh = fridge.sessions.seal_on(on_fridge, address, b"sealed, never delivered")  # counter 2
        cases: list[tuple[bytes, type[Exception], str]] = [
            (frame, ReplayError, "counter 1 from .* was already received"),
            (fresh[:-1] + bytes([fresh[-1] ^ 1]), ForgedMessageError, "failed authenticated decryption"),
            (fresh[:8] + (3).to_bytes(8, "big") + fresh[16:], ForgedMessageError, "authenticated decryption"),
            (fresh[:8] + bytes(8) + fresh[16:], ReplayError, r"counter 0 from \w+ is outside"),
            (fresh[:8] + (2**40).to_bytes(8, "big") + fresh[16:], ReplayError, "outside a session's range"),
            (fresh[:4] + b"\x00\x00\x00\x01" + fresh[8:], ReplayError, "no session 00000001 here"),
            (fresh[:30], MalformedMessageError, "truncated session frame"),
        ]
        for bad, error, message in cases:
            before = dict(hub.node.dropped)
            with pytest.raises(error, match=message):
                hub.sessions.open(bad, address)
            _inject(home, address, bad)
            await _refused(hub, before, error)
            assert hub.sessions.table.window(session.index) == window
        # Sealed for the request inbox, moved to the response inbox: the inbox is authenticated.
        with pytest.raises(ForgedMessageError, match="failed authenticated decryption"):
            hub.sessions.open(fresh, address.replace("/req/", "/resp/"))
        # None of it moved the window: the genuine frame still opens.
        _inject(home, address, fresh)
        assert (await hub.next()).payload == b"sealed, never delivered"
        await fridge.send(hub, b"still here")
        assert (await hub.next()).payload == b"still here"


async def test_nothing_from_before_a_restart_opens_or_answers_after_it(tmp_path: Path) -> None:
    async with pair(tmp_path) as (home, hub, fridge, hub_dev, _):
        await fridge.send(hub)
        await hub.next()
        recorded = list(home.sim.wiretap.frames)
        await _stop(hub)
        restarted = await _live(home.sim, _node(home, hub_dev))
        try:
            restarted.sessions.speaks(fridge.id)
            for address, frame in recorded:
                if f"/{hub.id}" not in address:
                    continue
                before = dict(restarted.node.dropped)
                _inject(home, address, frame)
                await _refused(restarted, before, ReplayError)  # the data, and handshake steps 1 and 3
            assert restarted.sessions.sessions_with(fridge.id) == [] and restarted.sessions.pending == 0
            # The fridge learns the new run from presence (here: by hand) and makes a new session.
            fridge.sessions.forget_runs(hub.id, keep=restarted.node.session)
            await fridge.send(restarted)
            assert (await restarted.next()).payload == PROMPT
        finally:
            await _stop(restarted)


async def test_handshakes_from_strangers_revoked_devices_and_floods_are_bounded(tmp_path: Path) -> None:
    limits = MeshLimits(sessions=SessionLimits(max_pending_per_peer=2))
    async with pair(tmp_path, limits) as (home, hub, fridge, _, fridge_dev):
        inbox = Address(home.root.household_id, hub.id, Channel.REQUESTS)

        def m1(sender: DeviceIdentity, index: int) -> bytes:
            credential = RunCredential.make(sender, home.root.household_id, "1" * 16, aes=False)
            message = Initiator(credential, hub.id, index).message_1()
            return HandshakeFrame(1, sender.device_id, hub.id, "1" * 16, hub.node.session, index, 0,
                                  message).pack()  # fmt: skip

        stranger = DeviceIdentity.generate()
        before = dict(hub.node.dropped)
        home.sim.inject(inbox, m1(stranger, 1))
        await _refused(hub, before, NotAMemberError)
        # A flood of messages 1 naming one member (anyone on the broker can send them): the table keeps
        # the newest two, and the member's own handshake still gets through.
        before = dict(hub.node.dropped)
        for index in range(1, 6):
            home.sim.inject(inbox, m1(fridge_dev.identity, index))
        assert await until(lambda: hub.sessions.evicted == 3)
        assert hub.sessions.pending == 2 and hub.node.dropped == Counter(before)
        await fridge.send(hub)
        assert (await hub.next()).payload == PROMPT
        assert hub.sessions.pending == 1  # its handshake took the oldest flood entry's slot, then finished
        # Revoked: its half-done handshakes and its sessions are forgotten; nothing more is answered.
        crl = home.root.revoke(fridge.id)
        hub.node.membership.apply_revocations(crl)
        assert hub.sessions.pending == 0 and fridge.id not in hub.sessions.speakers
        before = dict(hub.node.dropped)
        home.sim.inject(inbox, m1(fridge_dev.identity, 9))
        await _refused(hub, before, NotAMemberError)
        with pytest.raises(MalformedMessageError, match="step 4 does not exist"):
            HandshakeFrame.parse(HandshakeFrame(4, hub.id, hub.id, "1" * 16, "1" * 16, 1, 1, b"x").pack())


async def test_sessions_rekey_by_time_and_count_and_forget_their_keys(tmp_path: Path) -> None:
    limits = MeshLimits(sessions=SessionLimits(rekey_after_s=10, reject_after_s=15, rekey_after_messages=16))
    async with pair(tmp_path, limits) as (home, hub, fridge, *_):
        now = [1000.0]
        for live in (hub, fridge):
            live.sessions.clock = lambda: now[0]
        for _ in range(16):
            await fridge.send(hub)
            await hub.next()
        assert len(fridge.sessions.sessions_with(hub.id)) == 1
        await fridge.send(hub)  # the 17th: a new handshake first
        await hub.next()
        first, second = fridge.sessions.sessions_with(hub.id)
        assert (first.sent, second.sent) == (16, 1)
        (old_address, old_frame), *_ = _frames(home, KIND_DATA, hub.id)
        now[0] += 10  # past rekey_after_s: the next send makes a third
        await fridge.send(hub)
        await hub.next()
        assert len(fridge.sessions.sessions_with(hub.id)) == 3
        now[0] += 5  # the first two are 15 s old: their keys are refused and forgotten
        before = dict(hub.node.dropped)
        _inject(home, old_address, old_frame)
        await _refused(hub, before, ReplayError)
        assert hub.sessions.prune() == 1 and fridge.sessions.prune() == 2
        assert len(hub.sessions.sessions_with(fridge.id)) == 1


async def test_a_failed_rekey_leaves_the_old_session_serving_without_waiting_again(tmp_path: Path) -> None:
    limits = MeshLimits(sessions=SessionLimits(rekey_after_s=10, reject_after_s=60, handshake_s=0.3))
    async with pair(tmp_path, limits) as (home, hub, fridge, *_):
        now = [1000.0]
        for live in (hub, fridge):
            live.sessions.clock = lambda: now[0]
        await fridge.send(hub)
        await hub.next()
        now[0] += 10  # due for a rekey, but the hub's answers to handshakes are lost
        home.sim.drop = lambda address, frame: kind_of(frame) == KIND_HANDSHAKE and f"/{fridge.id}" in address
        await fridge.send(hub, b"after a failed rekey")  # waits one handshake_s, then the old session
        assert (await hub.next()).payload == b"after a failed rekey"
        (session,) = fridge.sessions.sessions_with(hub.id)
        assert session.retry_rekey_at == now[0] + 3.0 and session.sent == 2
        handshakes = len(_frames(home, KIND_HANDSHAKE, hub.id))
        await fridge.send(hub, b"no wait")  # backing off: no new handshake, the old session at once
        assert (await hub.next()).payload == b"no wait"
        assert len(_frames(home, KIND_HANDSHAKE, hub.id)) == handshakes


async def test_a_peer_that_never_finishes_the_handshake_fails_the_request_over(tmp_path: Path) -> None:
    settings = MeshSettings(
        presence_interval_s=0.05, coalesce_ms=0, limits=MeshLimits(sessions=SessionLimits(handshake_s=0.3))
    )
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], settings=settings)
        fridge = home.device("fridge", settings=settings)
        await home.start(hub, fridge)
        home.sim.drop = lambda address, frame: kind_of(frame) == KIND_HANDSHAKE
        stream = fridge.endpoint.stream(fridge.endpoint.peers.get(hub.id), "generate", {"words": ["a"]},
                                        deadline_s=5, stall_s=1)  # fmt: skip
        with pytest.raises(PeerLostError, match=r"did not finish a session handshake within 0\.3 s"):
            await anext(stream)
        assert fridge.node.sessions is not None and fridge.node.sessions.pending == 0
        home.sim.drop = lambda address, frame: False
        again = fridge.endpoint.stream(fridge.endpoint.peers.get(hub.id), "generate", {"words": ["a"]},
                                       deadline_s=5, stall_s=1)  # fmt: skip
        chunks = [c async for c in again]
        assert [c.text for c in chunks] == ["a", ""]


async def test_a_v1_envelope_from_a_device_that_speaks_v2_is_a_downgrade(tmp_path: Path) -> None:
    async with pair(tmp_path) as (home, hub, fridge, _, fridge_dev):
        address = Address(home.root.household_id, hub.id, Channel.REQUESTS)
        hub_cert = hub.node.membership.member(hub.id)
        frame = seal(fridge_dev.identity, topic=f"{address}#{hub.node.session}",
                     counter=fridge.node.counter.next(), payload=PROMPT, recipient=hub_cert)  # fmt: skip
        window = hub.node.opener.replay.window(fridge.id)
        before = dict(hub.node.dropped)
        home.sim.inject(address, frame)
        await _refused(hub, before, ForgedMessageError)
        assert hub.node.opener.replay.window(fridge.id) == window
        # Once its signed presence says v1 only (rolled back), v1 is what it speaks.
        hub.sessions.speaks(fridge.id, False)
        home.sim.inject(address, frame)
        assert (await hub.next()).payload == PROMPT


@pytest.mark.parametrize("old", ["hub", "fridge"])
async def test_a_household_mid_rollout_serves_both_ways(tmp_path: Path, old: str) -> None:
    """One device still on v1 (its presence says so): requests and answers go in v1 envelopes to and
    from it, and in v2 sessions between the others."""
    v1 = MeshSettings(
        presence_interval_s=0.05, coalesce_ms=0, limits=MeshLimits(sessions=SessionLimits(enabled=False))
    )
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], settings=v1 if old == "hub" else None)
        fridge = home.device("fridge", settings=v1 if old == "fridge" else None)
        car = home.device("car", serves=["generate"])
        await home.start(hub, fridge, car)
        for server in (hub, car):
            peer = fridge.endpoint.peers.get(server.id)
            assert peer is not None
            chunks = [c async for c in fridge.endpoint.stream(peer, "generate", {"words": ["x", "y"]},
                                                              deadline_s=5, stall_s=1)]  # fmt: skip
            assert [c.text for c in chunks] == ["x", "y", ""]
        old_dev, new = (hub, fridge) if old == "hub" else (fridge, hub)
        assert old_dev.node.sessions is None
        direct = [(a, f) for a, f in home.sim.wiretap.frames if "/presence/" not in a]
        # Everything to the old device is v1; everything it sent too (no v2 frame names it anywhere).
        assert all(f[2] == 1 for a, f in direct if f"/{old_dev.id}" in a)
        assert new.node.sessions is not None and new.node.sessions.sessions_with(old_dev.id) == []
        # The new devices talk v2 with each other (the car served the fridge through a session).
        if old == "hub":
            assert fridge.node.sessions is not None and fridge.node.sessions.sessions_with(car.id)
            assert any(f[2] == 2 for a, f in direct if f"/{car.id}" in a)


async def test_a_statement_binds_its_credential_to_one_household_device_and_run(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub")
        credential = RunCredential.make(hub.identity, home.root.household_id, "1" * 16, aes=True)
        args = (hub.certificate, home.root.household_id, "1" * 16, credential.ccs, credential.statement)
        assert verify_statement(*args) == 1
        for bad in (
            (hub.certificate, "f" * 32, *args[2:]),
            (hub.certificate, args[1], "2" * 16, *args[3:]),
            (*args[:3], credential.ccs[:-1] + b"\x00", credential.statement),
            (*args[:4], bytes([0]) + credential.statement[1:]),  # claims no AES: the flags are signed
        ):
            with pytest.raises(ForgedMessageError, match="not signed by its device key"):
                verify_statement(*bad)
        with pytest.raises(MalformedMessageError, match="no credential statement"):
            verify_statement(*args[:4], None)


def test_one_shot_runs_of_a_device_never_evict_the_run_it_is_busy_with() -> None:
    """A device's agent, its one-shot commands and Home Assistant share one device id (each its own
    run): the table keeps a bounded number of that device's runs, and the one it forgets is the run used
    least lately, never the agent's busy session; within a run, the oldest session (a rekey's
    predecessor) goes first."""
    now = [0.0]
    table = SessionTable(SessionLimits(max_runs_per_peer=2, max_sessions_per_peer=2), lambda: now[0])
    cipher = SessionCipher(bytes(32), CHACHA20_POLY1305)
    keys = Keys(cipher, cipher, OscoreMaterial(bytes(16), bytes(8), b"\x01", b"\x02"))
    agent = table.add("f" * 32, "a" * 16, 1, 101, keys, initiator=False)
    for n, run in enumerate(("b" * 16, "c" * 16, "d" * 16), start=2):  # one-shot commands, one by one
        now[0] += 1
        table.add("f" * 32, run, n, 100 + n, keys, initiator=False)
        now[0] += 1
        agent.used = now[0]  # the agent keeps talking between them
    assert {s.peer_run for s in table.with_peer("f" * 32)} == {"a" * 16, "d" * 16}
    assert table.get(1) is agent
    for index in (5, 6):  # two rekeys of the agent's run: its oldest session goes
        table.add("f" * 32, "a" * 16, index, 100 + index, keys, initiator=True)
    assert [s.index for s in table.with_peer("f" * 32) if s.peer_run == "a" * 16] == [5, 6]
