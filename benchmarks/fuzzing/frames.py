"""Envelopes as an attacker builds them: every header field chosen (version, kind, ids, counter, time,
epoch, topic and its length), encrypted with the right key or another, signed by the sender, by someone
else or by no one, then cut or flipped at the byte level.

The layout is the one `edge_agent.mesh.envelope` reads (its header struct and signed digest are used
here, not copied), so a forgery with every field right opens: `tests/test_fuzz.py` checks that, or a
drift between the two would leave the envelope target fuzzing a format nobody speaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import nacl.bindings as sodium
from nacl.signing import SigningKey
from nacl.utils import random as random_bytes

from edge_agent.mesh.envelope import _HEAD, MAGIC, NONCE_BYTES, _digest
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.identity import DeviceIdentity

__all__ = ["Forgery", "forge", "pair_key"]

Cipher = Literal["pair", "group", "random", "none"]


@dataclass(frozen=True)
class Forgery:
    """One frame's every choice (the input a fuzz example draws)."""

    version: int
    kind: int
    sender: bytes
    recipient: bytes
    counter: int
    timestamp_ms: int
    epoch: int
    topic: bytes
    topic_length: int | None
    """What the header claims; None: the topic's real length."""
    cipher: Cipher
    signer: Literal["sender", "other", "none"]
    payload: bytes
    magic: bytes = MAGIC


def pair_key(identity: DeviceIdentity, peer: DeviceCertificate) -> bytes:
    """The X25519 key two members share (what `seal` uses for direct messages)."""
    return bytes(sodium.crypto_box_beforenm(bytes(peer.public_box_key), bytes(identity.box_key)))


def forge(
    f: Forgery,
    *,
    sender: DeviceIdentity,
    other: DeviceIdentity,
    pair: bytes,
    group: bytes,
) -> bytes:
    """The frame ``f`` describes. ``sender`` signs as the header's sender (whatever id it names),
    ``other`` is a key that is not the sender's; ``pair``/``group`` are the keys a genuine frame uses."""
    length = len(f.topic) if f.topic_length is None else f.topic_length
    head = _HEAD.pack(
        f.magic, f.version, f.kind, f.sender, f.recipient, f.counter, f.timestamp_ms, f.epoch, length
    )
    aad = head + f.topic
    nonce = random_bytes(NONCE_BYTES)
    key = {"pair": pair, "group": group, "random": random_bytes(32)}.get(f.cipher)
    sealed = (
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(f.payload, aad, nonce, key)
        if key is not None
        else f.payload + bytes(16)
    )
    body = aad + nonce + sealed
    signer: SigningKey | None = {"sender": sender.signing_key, "other": other.signing_key}.get(f.signer)
    signature = signer.sign(_digest(body)).signature if signer is not None else random_bytes(64)
    return body + signature
