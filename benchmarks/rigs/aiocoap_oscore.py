"""aiocoap's own OSCORE, keyed by a Hearth session: the independent implementation the tests check the
message lane's (`edge_agent.mesh.transports.coap.protection`) against, what they attack the lane with
(a member's keys in a client aiocoap drives), and the benchmark's aiocoap + OSCORE stack.

aiocoap's own contexts are files or come from its EDHOC code; this one is made from the session's
`OscoreMaterial` and kept in memory.
"""

from __future__ import annotations

from aiocoap import oscore

from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial

__all__ = ["ALGORITHM", "REPLAY_WINDOW", "MemoryContext"]

ALGORITHM = "AES-CCM-16-64-128"
REPLAY_WINDOW = 32


class MemoryContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):  # type: ignore[misc]
    """One OSCORE context with one member's run, for aiocoap's client credentials or server map."""

    echo_recovery = None
    """No Echo recovery (RFC 8613 B.1.2): the window never outlives the keys. aiocoap reads the
    attribute when it finds a replay, so it must exist."""

    def __init__(self, material: OscoreMaterial, peer: str, run: str = "") -> None:
        alg = oscore.algorithms[ALGORITHM]
        longest = alg.iv_bytes - 6
        if max(len(material.sender_id), len(material.recipient_id)) > longest:
            raise ValueError(f"an OSCORE id of {ALGORITHM} is at most {longest} bytes")
        if material.sender_id == material.recipient_id:
            raise ValueError("an OSCORE context's sender and recipient ids must differ")
        self.alg_aead = alg
        self.hashfun = oscore.hashfunctions["sha256"]
        self.id_context = None
        self.sender_id = material.sender_id
        self.recipient_id = material.recipient_id
        self.derive_keys(material.master_salt, material.master_secret)
        self.sender_sequence_number = 0
        self.recipient_replay_window = oscore.ReplayWindow(REPLAY_WINDOW, lambda: None)
        self.recipient_replay_window.initialize_empty()
        self.peer = peer
        self.run = run
        """The peer's run the session is with (a reply goes back to that run only)."""
        # aiocoap's base class has one class-level list: each context needs its own.
        self.authenticated_claims = [f"member:{peer}"]

    def post_seqnoincrease(self) -> None:
        """Nothing to persist: the keys die with the session, so a sequence number is never reused."""

    def __repr__(self) -> str:
        ids = f"sid={self.sender_id.hex()} rid={self.recipient_id.hex()}"
        return f"<MemoryContext peer={self.peer[:8]} {ids}>"
