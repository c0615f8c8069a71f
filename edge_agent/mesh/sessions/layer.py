"""`Sessions`: this device's forward-secret sessions with its peers (envelope v2), for one run.

A session belongs to a pair of runs (ours and the peer's, as their presence names them): keys live in
memory only, so nothing sealed before either side restarted opens afterwards. The first message to a
peer's run waits for a handshake (one round trip, then message 3 goes out ahead of the data); after
``rekey_after_s`` or ``rekey_after_messages`` the next send makes a new one, and a session's keys are
forgotten ``reject_after_s`` after it was made. Either side may start a handshake; both sessions then
work, and each side sends on the newest.

Receiving checks, in order: size, session index, the peer still a member, session age, the counter
window, authenticated decryption, freshness of the timestamp inside; the counter is committed last.
Every table is bounded: sessions per peer, half-done handshakes per peer and in all.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from edge_agent.errors import (
    ForgedMessageError,
    MalformedMessageError,
    PeerError,
    ReplayError,
    SessionError,
)
from edge_agent.mesh.envelope import KIND_DIRECT, MAX_TIMESTAMP_MS, Opened, PathHeader, check_fresh
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.sessions.aead import has_aes_instructions
from edge_agent.mesh.sessions.credentials import RunCredential, verify_statement
from edge_agent.mesh.sessions.handshake import Initiator, Keys, Responder
from edge_agent.mesh.sessions.pending import Initiating, Responding, context_of
from edge_agent.mesh.sessions.table import Session, SessionTable
from edge_agent.mesh.sessions.wire import (
    DATA_HEAD,
    HandshakeFrame,
    data_header,
    pack_time,
    parse_data_header,
    unpack_time,
)
from edge_agent.mesh.settings import SessionLimits

__all__ = ["Session", "Sessions"]

log = logging.getLogger(__name__)

SendFrame = Callable[[str, bytes], Awaitable[None]]
"""Sends a handshake frame to a member's request inbox (raises TransportError)."""
_MAX_SPEAKERS = 4096
REKEY_RETRY_HANDSHAKES = 10
"""After a failed rekey, wait this many handshake timeouts before the next try."""


@dataclass(repr=False)
class Sessions:
    identity: DeviceIdentity
    membership: Membership
    limits: SessionLimits
    run: Callable[[], str]
    """This device's current run (its presence session)."""
    send_frame: SendFrame
    max_frame: int
    max_skew_ms: int = 60_000
    aes: bool = field(default_factory=has_aes_instructions)
    clock: Callable[[], float] = time.monotonic
    speakers: set[str] = field(default_factory=set)
    """Devices known to speak v2 (their presence says so, or a handshake with them finished): a v1
    envelope from one of them is a downgrade and refused."""
    evicted: int = 0
    """Half-done handshakes dropped to make room for newer ones (a flood of messages 1 shows here)."""
    _credential: RunCredential | None = None
    _initiating: dict[tuple[str, str], Initiating] = field(default_factory=dict)
    _responding: dict[int, Responding] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.table = SessionTable(self.limits, lambda: self.clock())
        """The sessions made (the clock read through this object, so a test may replace it)."""
        self.membership.on_revoked.append(self.revoked)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def max_counter(self) -> int:
        """The highest counter an honest peer can reach on one session (it rekeys before), with room."""
        return self.limits.rekey_after_messages + (1 << 16)

    def credential(self) -> RunCredential:
        run = self.run()
        if self._credential is None or self._credential.run != run:
            household = self.membership.household_id
            self._credential = RunCredential.make(self.identity, household, run, aes=self.aes)
        return self._credential

    # -- what peers speak -----------------------------------------------------------------------------

    def speaks(self, device_id: str, v2: bool = True) -> None:
        """Record what ``device_id``'s signed presence says it speaks."""
        if not v2:
            self.speakers.discard(device_id)
            return
        if len(self.speakers) >= _MAX_SPEAKERS and device_id not in self.speakers:
            self.speakers.clear()
        self.speakers.add(device_id)

    # -- sending --------------------------------------------------------------------------------------

    def current(self, peer: str, peer_run: str) -> Session | None:
        """The newest usable session with that run of ``peer``."""
        return self.table.current(peer, peer_run)

    async def seal(
        self, cert: DeviceCertificate, peer_run: str, inbox: str, payload: bytes, now_ms: int | None = None
    ) -> bytes:
        """``payload`` sealed on the current session with that run of the member (made first if need
        be). Raises SessionError if no session could be made, TransportError if the link is down."""
        return self.seal_on(await self.ready(cert, peer_run), inbox, payload, now_ms)

    async def ready(self, cert: DeviceCertificate, peer_run: str) -> Session:
        """The session to send on with that run of the member, made first if there is none or it is due
        for a rekey (the old one serves if that fails). Raises SessionError, TransportError."""
        session = self.table.current(cert.device_id, peer_run)
        if session is None or self.table.worn(session):
            try:
                session = await self.establish(cert, peer_run)
            except SessionError:
                if session is None:
                    raise
                session.retry_rekey_at = self.clock() + REKEY_RETRY_HANDSHAKES * self.limits.handshake_s
                log.info("rekeying with %s failed; the current session serves until it expires", cert.name)
        return session

    def seal_on(self, session: Session, inbox: str, payload: bytes, now_ms: int | None = None) -> bytes:
        session.sent += 1
        session.used = self.clock()
        head = data_header(session.peer_index, session.sent)
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        return head + session.sender.seal(session.sent, pack_time(ts) + payload, head + inbox.encode())

    async def establish(self, cert: DeviceCertificate, peer_run: str) -> Session:
        """A new session with that run of ``cert``'s device (joining a handshake already under way)."""
        key = (cert.device_id, peer_run)
        pending = self._initiating.get(key)
        if pending is None:
            self._expire_pending()
            if len(self._initiating) + len(self._responding) >= self.limits.max_pending:
                raise SessionError(
                    f"too many session handshakes under way; not starting one with {cert.name}"
                )
            index = self._new_index()
            initiator = Initiator(self.credential(), cert.device_id, index)
            done: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
            pending = Initiating(initiator, cert.device_id, peer_run, index, done, self.clock())
            self._initiating[key] = pending
            frame = HandshakeFrame(
                1,
                self.device_id,
                cert.device_id,
                self.run(),
                peer_run,
                pending.index,
                0,
                initiator.message_1(),
            )
            try:
                await self.send_frame(cert.device_id, frame.pack())
            except BaseException:
                self._initiating.pop(key, None)
                raise
        try:
            async with asyncio.timeout(max(0.0, pending.started + self.limits.handshake_s - self.clock())):
                return await asyncio.shield(pending.done)
        except TimeoutError:
            if self._initiating.get(key) is pending:
                del self._initiating[key]
            raise SessionError(
                f"{cert.name} did not finish a session handshake within {self.limits.handshake_s:g} s"
            ) from None
        finally:
            if self._initiating.get(key) is pending and pending.done.done():
                del self._initiating[key]

    # -- receiving ------------------------------------------------------------------------------------

    def open(self, frame: bytes, inbox: str, now_ms: int | None = None) -> Opened:
        """Verify and decrypt one data frame, or raise a PeerError saying why not."""
        index, counter = parse_data_header(frame, self.max_frame)
        session, cert = self.receiving(index)
        window = session.window
        if counter == 0 or counter > self.max_counter:
            raise ReplayError(
                f"counter {counter} from {session.peer} is outside a session's range [1, {self.max_counter}]"
            )
        self.table.replay.check(window, counter)
        head = frame[: DATA_HEAD.size]
        try:
            plain = session.receiver.open(counter, frame[DATA_HEAD.size :], head + inbox.encode())
        except InvalidTag:
            raise ForgedMessageError(f"message from {session.peer} failed authenticated decryption") from None
        header = PathHeader(
            version=2,
            kind=KIND_DIRECT,
            sender=session.peer,
            recipient=self.device_id,
            counter=counter,
            timestamp_ms=min(unpack_time(plain), MAX_TIMESTAMP_MS),
            epoch=0,
            topic=inbox,
        )
        check_fresh(header, self.max_skew_ms, now_ms)
        self.table.replay.commit(window, counter)
        session.used = self.clock()
        return Opened(header, cert, plain[8:])

    def receiving(self, index: int) -> tuple[Session, DeviceCertificate]:
        """Our session ``index`` and its peer's certificate, if something may still arrive on it: it
        exists, its peer is a member now, its keys are not past ``reject_after_s``. Raises ReplayError
        or NotAMemberError (a PeerError) saying which."""
        session = self.table.get(index)
        if session is None:
            raise ReplayError(
                f"no session {index:08x} here: sealed for an earlier run of this device, expired, "
                "or never made"
            )
        cert = self.membership.member(session.peer)  # NotAMemberError once revoked or expired
        if self.table.expired(session):
            self.table.forget(session)
            raise ReplayError(f"session {index:08x} with {cert.name} has expired (keys forgotten)")
        return session, cert

    async def handshake(self, frame: bytes) -> None:
        """Take one handshake frame: answer it, or finish a handshake. Raises a PeerError for a frame
        that must be refused (nothing changes then), TransportError if an answer cannot be sent."""
        hs = HandshakeFrame.parse(frame)
        if hs.recipient != self.device_id:
            raise MalformedMessageError(f"handshake addressed to {hs.recipient}, not to this device")
        cert = self.membership.member(hs.sender)
        if hs.recipient_run != self.run():
            raise ReplayError(
                f"session handshake from {hs.sender} is for another run of this device (before a restart)"
            )
        if hs.step == 1:
            await self._answer(cert, hs)
        elif hs.step == 2:
            await self._confirm(cert, hs)
        else:
            self._finish(cert, hs)

    async def _answer(self, cert: DeviceCertificate, hs: HandshakeFrame) -> None:
        # Message 1 is not authenticated (anyone on the broker can send one naming any member), so a
        # full table makes room by dropping its oldest entry, as a SYN cache does, rather than refusing
        # newcomers: an honest handshake needs its slot for one round trip only.
        self._expire_pending()
        mine = [i for i, r in self._responding.items() if r.peer == cert.device_id]
        if len(mine) >= self.limits.max_pending_per_peer:
            self._evict(mine[0])
        if len(self._initiating) + len(self._responding) >= self.limits.max_pending:
            if not self._responding:
                raise ReplayError("too many session handshakes under way here")
            self._evict(next(iter(self._responding)))
        index = self._new_index()
        responder = Responder(self.credential(), cert.device_id, index)
        message_2 = responder.message_2(hs.message)
        self._responding[index] = Responding(
            responder, cert.device_id, hs.sender_run, hs.initiator_index, self.clock()
        )
        answer = HandshakeFrame(
            2, self.device_id, cert.device_id, self.run(), hs.sender_run, hs.initiator_index, index, message_2
        )
        try:
            await self.send_frame(cert.device_id, answer.pack())
        except BaseException:
            self._responding.pop(index, None)
            raise

    async def _confirm(self, cert: DeviceCertificate, hs: HandshakeFrame) -> None:
        pending = self._initiating.get((cert.device_id, hs.sender_run))
        if pending is None or pending.index != hs.initiator_index or pending.done.done():
            raise ReplayError(
                f"an answer from {cert.device_id} to a session handshake this device is not making"
            )
        household, run = self.membership.household_id, self.run()

        def verify(ccs: bytes, statement: bytes | None) -> int:
            return verify_statement(cert, household, hs.sender_run, ccs, statement)

        context = context_of(household, self.device_id, cert.device_id, run, hs.sender_run)
        try:
            message_3, keys = pending.initiator.message_3(hs.message, verify, context)
        except PeerError as exc:  # this handshake cannot finish now: the sender learns at once
            del self._initiating[(cert.device_id, hs.sender_run)]
            pending.done.add_done_callback(lambda f: f.exception())
            pending.done.set_exception(SessionError(f"session handshake with {cert.name} refused: {exc}"))
            raise
        # Message 3 leaves before anything sealed with the new keys, so it arrives first.
        done = HandshakeFrame(
            3,
            self.device_id,
            cert.device_id,
            run,
            hs.sender_run,
            pending.index,
            hs.responder_index,
            message_3,
        )
        await self.send_frame(cert.device_id, done.pack())
        session = self._add(cert.device_id, hs.sender_run, pending.index, hs.responder_index, keys, True)
        if not pending.done.done():
            pending.done.set_result(session)

    def _finish(self, cert: DeviceCertificate, hs: HandshakeFrame) -> None:
        state = self._responding.get(hs.responder_index)
        if (
            state is None
            or state.peer != cert.device_id
            or state.peer_run != hs.sender_run
            or state.initiator_index != hs.initiator_index
        ):
            raise ReplayError(
                f"the end of a session handshake with {cert.device_id} this device is not answering"
            )
        household = self.membership.household_id

        def verify(ccs: bytes, statement: bytes | None) -> int:
            return verify_statement(cert, household, hs.sender_run, ccs, statement)

        context = context_of(household, cert.device_id, self.device_id, hs.sender_run, self.run())
        del self._responding[hs.responder_index]  # finished or refused, it is over
        keys = state.responder.finish(hs.message, verify, context)
        self._add(cert.device_id, hs.sender_run, hs.responder_index, hs.initiator_index, keys, False)

    # -- the tables -----------------------------------------------------------------------------------

    def _add(
        self, peer: str, peer_run: str, index: int, peer_index: int, keys: Keys, initiator: bool
    ) -> Session:
        session = self.table.add(peer, peer_run, index, peer_index, keys, initiator)
        self.speaks(peer)
        return session

    def _new_index(self) -> int:
        while True:
            index = secrets.randbits(32)
            if (
                index
                and index not in self.table
                and index not in self._responding
                and all(p.index != index for p in self._initiating.values())
            ):
                return index

    def _evict(self, index: int) -> None:
        gone = self._responding.pop(index)
        self.evicted += 1
        log.debug("dropped a half-done session handshake from %s to make room", gone.peer[:8])

    def _timed_out(self, pending: Initiating | Responding) -> bool:
        return self.clock() - pending.started >= self.limits.handshake_s

    def _expire_pending(self) -> None:
        for index in [i for i, r in self._responding.items() if self._timed_out(r)]:
            del self._responding[index]

    def prune(self) -> int:
        """Forget expired sessions and abandoned handshakes (housekeeping: keys must not outlive
        ``reject_after_s`` even with a peer we no longer talk to). Returns how many sessions went."""
        self._expire_pending()
        return self.table.prune()

    def revoked(self, devices: frozenset[str]) -> None:
        for device in devices:
            self.table.forget_peer(device)
            for index in [i for i, r in self._responding.items() if r.peer == device]:
                del self._responding[index]
            self.speakers.discard(device)

    def forget_runs(self, device_id: str, keep: str | None = None) -> None:
        """``device_id`` restarted (or left): sessions with its other runs are useless, forget them now."""
        self.table.forget_peer(device_id, keep)

    def sessions_with(self, device_id: str) -> list[Session]:
        """Diagnostics and tests."""
        return self.table.with_peer(device_id)

    def initiating(self) -> list[int]:
        """Our indices of the handshakes this device started and waits on (diagnostics and tests)."""
        return [p.index for p in self._initiating.values()]

    @property
    def pending(self) -> int:
        return len(self._initiating) + len(self._responding)
