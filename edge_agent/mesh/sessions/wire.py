"""Envelope v2 on the wire: session data frames and handshake frames (big-endian).

Data (kind 2), the hot path: a 16-byte header, then the AEAD ciphertext of the timestamp and payload::

    0  2  magic "HE"        4  4  receiver's session index (it chose it in the handshake)
    2  1  version = 2       8  8  counter (per session and direction, from 0: the AEAD nonce)
    3  1  kind = 2         16  …  ciphertext of [8-byte timestamp, ms since the epoch][payload], tag
                               associated data: the 16-byte header + the receiving inbox's name

No device id travels in a data frame: the receiver knows the peer from the session index, and the
broker learns from it only what it sees anyway (which inbox, how big, how often).

Handshake (kind 3), a few per peer and run: ids and runs in the clear (EDHOC protects its own
messages, and the statements inside bind them; see `handshake`)::

    0  2  magic "HE"       37  8  sender's run (its presence session)
    2  1  version = 2      45  8  recipient's run
    3  1  kind = 3         53  4  initiator's session index
    4  1  step: 1, 2, 3    57  4  responder's session index (0 in step 1)
    5 16  sender id        61  …  the EDHOC message of this step
   21 16  recipient id
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edge_agent.errors import MalformedMessageError

__all__ = [
    "DATA_HEAD",
    "KIND_DATA",
    "KIND_HANDSHAKE",
    "MAX_HANDSHAKE_FRAME",
    "TAG_BYTES",
    "TIME_BYTES",
    "VERSION",
    "HandshakeFrame",
    "data_header",
    "parse_data_header",
]

MAGIC = b"HE"
VERSION = 2
KIND_DATA, KIND_HANDSHAKE = 2, 3
DATA_HEAD = struct.Struct(">2sBBIQ")
TIME = struct.Struct(">Q")
TIME_BYTES = TIME.size
TAG_BYTES = 16
_HANDSHAKE_HEAD = struct.Struct(">2sBBB16s16s8s8sII")
MAX_EDHOC_MESSAGE = 512
"""Longest EDHOC message accepted (ours are 37, ~240 and ~215 bytes)."""
MAX_HANDSHAKE_FRAME = _HANDSHAKE_HEAD.size + MAX_EDHOC_MESSAGE
MIN_DATA_FRAME = DATA_HEAD.size + TIME_BYTES + TAG_BYTES


def data_header(index: int, counter: int) -> bytes:
    return DATA_HEAD.pack(MAGIC, VERSION, KIND_DATA, index, counter)


def parse_data_header(frame: bytes, max_frame: int) -> tuple[int, int]:
    """(receiver's session index, counter) of a data frame; raises MalformedMessageError."""
    if len(frame) > max_frame:
        raise MalformedMessageError(f"oversized frame: {len(frame)} bytes > limit {max_frame}")
    if len(frame) < MIN_DATA_FRAME:
        raise MalformedMessageError(f"truncated session frame: {len(frame)} bytes")
    _, _, _, index, counter = DATA_HEAD.unpack_from(frame)
    return index, counter


@dataclass(frozen=True, slots=True)
class HandshakeFrame:
    step: int
    sender: str
    recipient: str
    sender_run: str
    recipient_run: str
    initiator_index: int
    responder_index: int
    message: bytes

    def pack(self) -> bytes:
        return (
            _HANDSHAKE_HEAD.pack(
                MAGIC,
                VERSION,
                KIND_HANDSHAKE,
                self.step,
                bytes.fromhex(self.sender),
                bytes.fromhex(self.recipient),
                bytes.fromhex(self.sender_run),
                bytes.fromhex(self.recipient_run),
                self.initiator_index,
                self.responder_index,
            )
            + self.message
        )

    @classmethod
    def parse(cls, frame: bytes) -> HandshakeFrame:
        """Raises MalformedMessageError for anything but a well-formed handshake frame."""
        if len(frame) > MAX_HANDSHAKE_FRAME:
            raise MalformedMessageError(f"oversized handshake frame: {len(frame)} bytes")
        if len(frame) <= _HANDSHAKE_HEAD.size:
            raise MalformedMessageError(f"truncated handshake frame: {len(frame)} bytes")
        _, _, _, step, sender, recipient, s_run, r_run, i_index, r_index = _HANDSHAKE_HEAD.unpack_from(frame)
        if step not in (1, 2, 3):
            raise MalformedMessageError(f"handshake step {step} does not exist")
        if i_index == 0 or (step == 1) != (r_index == 0):
            raise MalformedMessageError("handshake frame with a missing or unexpected session index")
        return cls(
            step,
            sender.hex(),
            recipient.hex(),
            s_run.hex(),
            r_run.hex(),
            i_index,
            r_index,
            frame[_HANDSHAKE_HEAD.size :],
        )


def kind_of(frame: bytes) -> int | None:
    """The v2 kind of ``frame`` (data or handshake), or None if it is not a v2 frame (v1, or garbage)."""
    if len(frame) < 4 or frame[:2] != MAGIC or frame[2] != VERSION:
        return None
    return frame[3]


def pack_time(ms: int) -> bytes:
    return TIME.pack(ms)


def unpack_time(plain: bytes) -> int:
    return int(TIME.unpack_from(plain)[0])
