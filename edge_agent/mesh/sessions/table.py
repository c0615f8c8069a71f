"""The session table: the sessions this device holds with its peers' runs, by the index peers put in
their frames and by peer, with their counter windows; bounded per run of a peer and in runs per peer
(a device's agent, its one-shot commands and Home Assistant share one device id: an eviction takes the
run used least lately, never the busy one), aged by the clock it is given (rekey after
``rekey_after_s`` or ``rekey_after_messages``, keys forgotten after ``reject_after_s``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.mesh.replay import ReplayGuard
from edge_agent.mesh.sessions.aead import SessionCipher
from edge_agent.mesh.sessions.handshake import Keys
from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.settings import SessionLimits

__all__ = ["Session", "SessionTable"]

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Session:
    """Keys shared with one run of one peer."""

    peer: str
    peer_run: str
    index: int
    """Ours: the peer puts it in every frame it sends on this session."""
    peer_index: int
    sender: SessionCipher = field(repr=False)
    receiver: SessionCipher = field(repr=False)
    oscore: OscoreMaterial = field(repr=False)
    """The same handshake's OSCORE keys (the CoAP transport makes its context from them)."""
    made: float
    """The table's clock when the handshake finished."""
    initiator: bool
    sent: int = 0
    used: float = 0.0
    """The table's clock when a frame last went out or came in on it."""
    coap: object | None = field(default=None, repr=False)
    """The CoAP transport's OSCORE context of this session, made on first use (it dies with the
    session: its sequence number and replay window are never kept or copied)."""
    retry_rekey_at: float = 0.0
    """After a rekey that failed, the next is not tried before this (the table's clock): the old
    session serves meanwhile, and no send waits for a handshake that will not come."""

    @property
    def aead(self) -> str:
        return self.sender.name

    @property
    def window(self) -> str:
        """Its counter window's name (what a replay refusal names)."""
        return f"{self.peer} (session {self.index:08x})"


class SessionTable:
    def __init__(self, limits: SessionLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.replay = ReplayGuard()
        """One counter window per session (in memory: sessions do not outlive the run)."""
        self._by_index: dict[int, Session] = {}
        self._by_peer: dict[str, list[Session]] = {}

    def get(self, index: int) -> Session | None:
        return self._by_index.get(index)

    def __contains__(self, index: int) -> bool:
        return index in self._by_index

    def current(self, peer: str, peer_run: str) -> Session | None:
        """The newest usable session with that run of ``peer``."""
        for session in reversed(self._by_peer.get(peer, ())):
            if session.peer_run == peer_run and not self.expired(session):
                return session
        return None

    def add(
        self, peer: str, peer_run: str, index: int, peer_index: int, keys: Keys, initiator: bool
    ) -> Session:
        now = self.clock()
        session = Session(
            peer, peer_run, index, peer_index, keys.sender, keys.receiver, keys.oscore, now, initiator
        )
        session.used = now
        sessions = self._by_peer.setdefault(peer, [])
        sessions.append(session)
        self._by_index[index] = session
        same_run = [s for s in sessions if s.peer_run == peer_run]
        for old in same_run[: max(0, len(same_run) - self.limits.max_sessions_per_peer)]:
            self.forget(old)  # the oldest of this run: a rekey's predecessor
        runs: dict[str, float] = {}
        for s in self._by_peer.get(peer, ()):
            runs[s.peer_run] = max(runs.get(s.peer_run, 0.0), s.used)
        while len(runs) > self.limits.max_runs_per_peer:
            stale = min((r for r in runs if r != peer_run), key=runs.__getitem__)
            self.forget_run(peer, stale)  # another run of that device, the one used least lately
            del runs[stale]
        log.debug("session %08x with %s (%s, %s)", index, peer[:8], session.aead,
                  "we started it" if initiator else "it started it")  # fmt: skip
        return session

    def forget(self, session: Session) -> None:
        self._by_index.pop(session.index, None)
        self.replay.forget(session.window)
        sessions = self._by_peer.get(session.peer)
        if sessions is not None:
            with contextlib.suppress(ValueError):
                sessions.remove(session)
            if not sessions:
                del self._by_peer[session.peer]

    def expired(self, session: Session) -> bool:
        return self.clock() - session.made >= self.limits.reject_after_s

    def worn(self, session: Session) -> bool:
        """Due for a rekey (and not backing off from a failed one)."""
        now = self.clock()
        return now >= session.retry_rekey_at and (
            now - session.made >= self.limits.rekey_after_s
            or session.sent >= self.limits.rekey_after_messages
        )

    def prune(self) -> int:
        """Forget expired sessions; how many went."""
        gone = [s for s in self._by_index.values() if self.expired(s)]
        for session in gone:
            self.forget(session)
        return len(gone)

    def forget_run(self, device_id: str, run: str) -> None:
        for session in list(self._by_peer.get(device_id, ())):
            if session.peer_run == run:
                self.forget(session)

    def forget_peer(self, device_id: str, keep_run: str | None = None) -> None:
        """Every session with ``device_id`` but those with its run ``keep_run``."""
        for session in list(self._by_peer.get(device_id, ())):
            if session.peer_run != keep_run:
                self.forget(session)

    def with_peer(self, device_id: str) -> list[Session]:
        return list(self._by_peer.get(device_id, ()))

    def window(self, index: int) -> tuple[int, int] | None:
        session = self._by_index.get(index)
        return self.replay.window(session.window) if session is not None else None
