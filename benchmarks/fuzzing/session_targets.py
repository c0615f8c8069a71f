"""Fuzz target on forward-secret sessions (envelope v2): the data-frame decoder and the handshake, as
a member speaking v2 (mallory, with a real session to the device under test) and as anyone on the
broker can send them.

Inputs are built from genuine frames recorded when the target opens (mallory's handshake with the
device, one data frame): header fields chosen (session index, counter, step, ids, runs, indices),
the EDHOC message or ciphertext replaced or mutated at the byte level, sent into either inbox. Beyond
the household's invariants (`rig.Rig.check`): the device's tables stay within their bounds, and its
sessions with the honest hub are untouched (`Trusted.honest_sessions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from benchmarks.fuzzing.hostile import apply_edits, byte_edits, one_in
from benchmarks.fuzzing.mesh_targets import MeshTarget
from benchmarks.fuzzing.rig import Broken
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import Ping, encode
from edge_agent.mesh.sessions import KIND_DATA, KIND_HANDSHAKE, Session, Sessions, kind_of
from edge_agent.mesh.sessions.wire import HandshakeFrame, data_header

__all__ = ["SessionsTarget"]

SENDERS = ("mallory", "hub", "ghost", "stranger")
_EDITS = byte_edits()
_U32 = st.sampled_from((0, 1, 2**32 - 1)) | st.integers(0, 2**32 - 1)
_COUNTER = st.one_of(
    st.sampled_from(["next", "replay"]), st.sampled_from([0, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)
)


@dataclass(frozen=True)
class DataRecipe:
    index: int | None
    """None: mallory's genuine session index at the device."""
    counter: int | str
    channel: Channel
    payload: bytes | None
    """None: a genuine ping; else these bytes sealed as they are."""
    edits: list[tuple[str, int, int, bytes]]


@dataclass(frozen=True)
class HandshakeRecipe:
    step: int
    sender: str
    recipient: str
    runs: tuple[bool, bool]
    """(sender's run genuine, recipient's run genuine)."""
    indices: tuple[int | None, int | None]
    message: int
    """Which recorded EDHOC message (1, 2, 3) the frame carries, or 0: random bytes."""
    random: bytes
    edits: list[tuple[str, int, int, bytes]]
    channel: Channel


@st.composite
def recipes(draw: st.DrawFn) -> DataRecipe | HandshakeRecipe:
    channel = draw(st.sampled_from((Channel.REQUESTS, Channel.RESPONSES)))
    edits = draw(_EDITS) if draw(one_in(3)) else []
    if draw(st.booleans()):
        return DataRecipe(
            index=draw(_U32) if draw(one_in(4)) else None,
            counter=draw(_COUNTER) if draw(one_in(3)) else "next",
            channel=channel,
            payload=draw(st.binary(max_size=300)) if draw(one_in(4)) else None,
            edits=edits,
        )
    return HandshakeRecipe(
        step=draw(st.sampled_from((1, 2, 3)) | st.integers(0, 255)),
        sender=draw(st.sampled_from(SENDERS)),
        recipient=draw(st.sampled_from(("dut", "hub", "zeros"))),
        runs=(draw(st.booleans()), not draw(one_in(4))),
        indices=(
            draw(_U32) if draw(st.booleans()) else None,
            draw(_U32) if draw(st.booleans()) else None,
        ),
        message=draw(st.integers(0, 3)),
        random=draw(st.binary(max_size=600)),
        edits=edits,
        channel=channel,
    )


class SessionsTarget(MeshTarget):
    name = "sessions"
    about = (
        "envelope v2: session data frames (index, counter, inbox, ciphertext) and handshake frames "
        "(step, ids, runs, indices, EDHOC messages genuine, replayed, mutated or random), from a member "
        "with a real session, as the hub, a revoked member and a stranger"
    )

    async def open(self, tmp: Path) -> None:
        await super().open(tmp)
        rig = self.rig
        mallory = rig.mallory
        mallory.envelopes = [1, 2]
        await mallory.announce(encode(mallory.presence()))  # the device now takes mallory for a v2 speaker
        await rig.settle()
        self.mine = self._sessions(mallory.node.sessions)
        self.mine.speaks(rig.dut_id)
        rig.sim.wiretap.frames.clear()
        await mallory.send(rig.dut_id, Channel.REQUESTS, self._ping(), rig.dut_session)
        recorded = [f for _, f in rig.sim.wiretap.frames if kind_of(f) == KIND_HANDSHAKE]
        self.messages = {HandshakeFrame.parse(f).step: HandshakeFrame.parse(f).message for f in recorded}
        if sorted(self.messages) != [1, 2, 3]:
            raise RuntimeError(
                f"mallory's handshake with the device did not happen: steps {sorted(self.messages)}"
            )
        await rig.settle()
        self.session = self._session()
        self.inputs = recipes()
        rig.snapshot()

    @staticmethod
    def _sessions(sessions: Sessions | None) -> Sessions:
        if sessions is None:
            raise RuntimeError("sessions are off on this device")
        return sessions

    def _session(self) -> Session:
        found = self.mine.sessions_with(self.rig.dut_id)
        if not found:
            raise Broken("mallory has no session with the device under test")
        return found[-1]

    def _ping(self) -> bytes:
        return encode(Ping(nonce=7, reply_session=self.rig.mallory.node.session))

    def check(self) -> None:
        super().check()
        dut = self._sessions(self.rig.dut.node.sessions)
        limits = dut.limits
        if dut.pending > limits.max_pending:
            raise Broken(f"{dut.pending} handshakes half done at the device (limit {limits.max_pending})")
        for device in (self.rig.mallory.id, self.rig.honest.device_id):
            if len(dut.sessions_with(device)) > limits.max_sessions_per_peer:
                raise Broken(f"{len(dut.sessions_with(device))} sessions with {device[:8]} at the device")

    async def feed(self, data: st.DataObject) -> None:
        rig = self.rig
        recipe = data.draw(self.inputs, label="frame")
        inbox = rig.inbox(recipe.channel)
        if isinstance(recipe, DataRecipe):
            session = self.session
            if recipe.counter == "next" or recipe.counter == "replay":
                session.sent += 1 if recipe.counter == "next" else 0
                counter = max(1, session.sent)
            else:
                counter = int(recipe.counter)
                if not recipe.edits and recipe.index is None and counter <= self.mine.max_counter:
                    session.sent = max(session.sent, counter)  # it opens: mallory's next ones go above
            index = session.peer_index if recipe.index is None else recipe.index
            head = data_header(index, counter)
            payload = self._ping() if recipe.payload is None else recipe.payload
            plain = int(time.time() * 1000).to_bytes(8, "big") + payload
            frame = head + session.sender.seal(counter, plain, head + str(inbox).encode())
        else:
            ids = {
                "mallory": rig.mallory.id,
                "hub": rig.honest.device_id,
                "ghost": rig.ghost.device_id,
                "stranger": rig.stranger.device_id,
            }
            recipient = {"dut": rig.dut_id, "hub": rig.honest.device_id, "zeros": "0" * 32}[recipe.recipient]
            own_run, dut_run = recipe.runs
            message = self.messages.get(recipe.message, recipe.random)
            initiator, responder = recipe.indices
            frame = HandshakeFrame(
                recipe.step % 256,
                ids[recipe.sender],
                recipient,
                rig.mallory.node.session if own_run else "ab" * 8,
                rig.dut_session if dut_run else "cd" * 8,
                1 if initiator is None else initiator,
                0 if responder is None else responder,
                message,
            ).pack()
        if recipe.edits:
            frame = apply_edits(frame, recipe.edits)
        rig.sim.inject(inbox, frame)
        await rig.settle()
        if kind_of(frame) == KIND_DATA and self._session() is not self.session:
            self.session = self._session()
