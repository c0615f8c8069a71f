"""Envelope v1: every mesh message is signed by its sender and encrypted to its recipient.

Wire layout (big-endian)::

    0   2  magic "HE"            36  8  counter
    2   1  version = 1           44  8  timestamp, ms since the Unix epoch
    3   1  kind: 0 direct,       52  4  group key epoch (0 for direct)
           1 household group     56  2  topic length T
    4  16  sender device id      58  T  topic (UTF-8)
   20  16  recipient device id   58+T 24 nonce
           (zeros for group)     82+T …  ciphertext: XChaCha20-Poly1305, associated data = bytes [0, 58+T)
                                 end-64  Ed25519 signature by the sender over BLAKE2b-256 of
                                         everything before it (one fast hash pass, even for 64 KB)

Direct messages use the X25519 shared key of sender and recipient; broadcasts use the household group
key of the given epoch. The broker therefore sees only the header (ids, counter, time, topic) and
ciphertext, and cannot alter, forge, replay or re-route a message without the receiver noticing.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.bindings as sodium
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey
from nacl.utils import random as random_bytes
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.errors import ForgedMessageError, MalformedMessageError, NotAMemberError, ReplayError
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.replay import ReplayGuard

MAGIC = b"HE"
VERSION = 1
KIND_DIRECT, KIND_GROUP = 0, 1
_HEAD = struct.Struct(">2sBB16s16sQQIH")
NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES
SIG_BYTES = 64
GROUP = "0" * 32
MIN_FRAME = _HEAD.size + NONCE_BYTES + TAG_BYTES + SIG_BYTES
DEFAULT_MAX_FRAME = 1 << 20
MAX_TIMESTAMP_MS = 253_402_300_799_999
"""23:59:59.999 on 31 December 9999: any later time cannot be a real clock (and would not format)."""


class EnvelopeHeader(BaseModel):
    """The authenticated, unencrypted part of an envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = Field(ge=1, le=2)
    """1: this envelope; 2: a forward-secret session frame (`mesh.sessions`), opened into the same header."""
    kind: int = Field(ge=0, le=1)
    sender: str
    recipient: str
    counter: int = Field(ge=1)
    timestamp_ms: int = Field(ge=0, le=MAX_TIMESTAMP_MS)
    epoch: int = Field(ge=0)
    topic: str = Field(min_length=1, max_length=512)


@dataclass(frozen=True, slots=True)
class PathHeader:
    """The header of a message that came on a forward-secret session or a direct link, as an
    `EnvelopeHeader` reads: each field set by the path that checked it (the session's peer, its
    bounded counter, the inbox), so nothing is validated twice on the hot path."""

    version: int
    kind: int
    sender: str
    recipient: str
    counter: int
    timestamp_ms: int
    epoch: int
    topic: str


@dataclass(frozen=True)
class Opened:
    header: EnvelopeHeader | PathHeader
    sender: DeviceCertificate
    payload: bytes


def check_fresh(header: EnvelopeHeader | PathHeader, max_skew_ms: int, now_ms: int | None = None) -> None:
    """Raise ReplayError unless the header's time is within ``max_skew_ms`` of this device's clock (v1
    envelopes and v2 session frames alike)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    skew_ms = header.timestamp_ms - now
    if abs(skew_ms) > max_skew_ms:
        # The sender's time is not formatted as a date: it is untrusted (and a header from outside
        # the window says nothing more than how far outside it is).
        side = "ahead of" if skew_ms > 0 else "behind"
        raise ReplayError(
            f"message from {header.sender} is timestamped {abs(skew_ms) / 1000:.0f} s {side} this "
            f"device's clock, outside the {max_skew_ms / 1000:g} s freshness window"
        )


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32, person=b"hearth-env-v1").digest()


def _pair_key(
    identity: DeviceIdentity, peer: DeviceCertificate, cache: dict[tuple[str, str, str], bytes]
) -> bytes:
    """X25519 shared key (HSalsa20-hashed, as crypto_box), cached per (us, peer, peer key)."""
    cache_key = (identity.device_id, peer.device_id, peer.box_key)  # a re-issued cert may carry a new key
    key = cache.get(cache_key)
    if key is None:
        key = cache[cache_key] = sodium.crypto_box_beforenm(
            bytes(peer.public_box_key), bytes(identity.box_key)
        )
    return key


_SEAL_KEYS: dict[tuple[str, str, str], bytes] = {}


def seal(
    identity: DeviceIdentity,
    *,
    topic: str,
    counter: int,
    payload: bytes,
    recipient: DeviceCertificate | None = None,
    group_key: bytes | None = None,
    epoch: int = 0,
    now_ms: int | None = None,
) -> bytes:
    """Sign and encrypt ``payload`` to ``recipient``, or to the household group when ``group_key`` is set."""
    if (recipient is None) == (group_key is None):
        raise ValueError("give exactly one of recipient or group_key")
    topic_b = topic.encode()
    if recipient is not None:
        key = _pair_key(identity, recipient, _SEAL_KEYS)
        kind, to = KIND_DIRECT, bytes.fromhex(recipient.device_id)
    else:
        assert group_key is not None
        key, kind, to = group_key, KIND_GROUP, bytes(16)
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    head = _HEAD.pack(
        MAGIC, VERSION, kind, bytes.fromhex(identity.device_id), to, counter, ts, epoch, len(topic_b)
    )
    aad = head + topic_b
    nonce = random_bytes(NONCE_BYTES)
    body = aad + nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(payload, aad, nonce, key)
    return body + identity.signing_key.sign(_digest(body)).signature


@dataclass
class EnvelopeOpener:
    """Checks, in order: size, layout, addressing, topic binding, membership, signature, freshness,
    replay window, decryption; commits the counter only after all of them pass."""

    identity: DeviceIdentity
    membership: Membership
    replay: ReplayGuard = field(default_factory=ReplayGuard)
    group_keys: dict[int, bytes] = field(default_factory=dict)
    max_frame: int = DEFAULT_MAX_FRAME
    max_skew_ms: int = 60_000
    _pair_keys: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    _verify_keys: dict[str, VerifyKey] = field(default_factory=dict)
    """Members' signature keys by their hex (as `_pair_keys`: only members' certificates get here)."""

    def open(
        self,
        frame: bytes,
        topic: str,
        now_ms: int | None = None,
        *,
        introduce: Callable[[bytes], None] | None = None,
        replay: ReplayGuard | None = None,
        announcement: bool = False,
    ) -> Opened:
        """Verify and decrypt one frame, or raise a PeerError saying why not.

        ``introduce``: for group messages from a sender not yet known, decrypt first (only members hold
        the group key) and let the caller learn the root-signed certificate the payload carries (a
        presence advert); the signature is then checked against that certificate as usual.
        ``replay``: a separate counter window (presence adverts keep theirs in memory only, so a
        retained advert is accepted again after a restart while it is still fresh).
        ``announcement``: a presence-board frame; freshness and the counter window are left to the
        caller, who knows whether it is an advert (checked like any message) or a departure notice
        (sealed when its connection opened, and bound to that connection instead).
        """
        if len(frame) > self.max_frame:
            raise MalformedMessageError(f"oversized frame: {len(frame)} bytes > limit {self.max_frame}")
        if len(frame) < MIN_FRAME:
            raise MalformedMessageError(f"truncated frame: {len(frame)} bytes")
        magic, version, kind, sender_b, to_b, counter, ts, epoch, tlen = _HEAD.unpack_from(frame)
        if magic != MAGIC:
            raise MalformedMessageError("not a Hearth envelope (bad magic)")
        if version != VERSION:
            raise MalformedMessageError(f"unsupported envelope version {version}")
        end_aad = _HEAD.size + tlen
        if end_aad + NONCE_BYTES + TAG_BYTES + SIG_BYTES > len(frame):
            raise MalformedMessageError("truncated frame (topic length runs past the end)")
        try:
            wire_topic = frame[_HEAD.size : end_aad].decode()
            header = EnvelopeHeader(
                version=version,
                kind=kind,
                sender=sender_b.hex(),
                recipient=to_b.hex(),
                counter=counter,
                timestamp_ms=ts,
                epoch=epoch,
                topic=wire_topic,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedMessageError(f"bad envelope header: {exc}") from None
        if header.kind == KIND_DIRECT and header.recipient != self.identity.device_id:
            raise MalformedMessageError(f"addressed to {header.recipient}, not to this device")
        if header.kind == KIND_GROUP and header.recipient != GROUP:
            raise MalformedMessageError("group message with a recipient id")
        if header.topic != topic:
            if "#" in topic and header.topic.split("#")[0] == topic.split("#")[0]:
                raise ReplayError(
                    f"message from {header.sender} was sealed for another run of this device "
                    "(before a restart): refused"
                )
            raise ForgedMessageError(f"envelope bound to topic {header.topic!r} arrived on {topic!r}")
        body, signature = frame[:-SIG_BYTES], frame[-SIG_BYTES:]
        try:
            cert = self.membership.member(header.sender)
        except NotAMemberError:
            if introduce is None or header.kind != KIND_GROUP or header.sender in self.membership.revoked:
                raise
            introduce(self._decrypt(frame, body, end_aad, self._key_for(header, None), header.sender))
            cert = self.membership.member(header.sender)
        verify_key = self._verify_keys.get(cert.sign_key)
        if verify_key is None:
            verify_key = self._verify_keys[cert.sign_key] = cert.verify_key
        try:
            verify_key.verify(_digest(body), signature)
        except BadSignatureError:
            raise ForgedMessageError(
                f"bad signature on a message claiming to be from {header.sender}"
            ) from None
        if announcement:
            return Opened(header, cert, self._decrypt(frame, body, end_aad, self._key_for(header, cert),
                                                      header.sender))  # fmt: skip
        self.check_fresh(header, now_ms)
        guard = self.replay if replay is None else replay
        guard.check(header.sender, header.counter)
        payload = self._decrypt(frame, body, end_aad, self._key_for(header, cert), header.sender)
        guard.commit(header.sender, header.counter)
        return Opened(header, cert, payload)

    def check_fresh(self, header: EnvelopeHeader | PathHeader, now_ms: int | None = None) -> None:
        check_fresh(header, self.max_skew_ms, now_ms)

    @staticmethod
    def _decrypt(frame: bytes, body: bytes, end_aad: int, key: bytes, sender: str) -> bytes:
        nonce = frame[end_aad : end_aad + NONCE_BYTES]
        try:
            return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(body[end_aad + NONCE_BYTES :]), bytes(frame[:end_aad]), bytes(nonce), key
            )
        except CryptoError:
            raise ForgedMessageError(f"message from {sender} failed authenticated decryption") from None

    def _key_for(self, header: EnvelopeHeader, cert: DeviceCertificate | None) -> bytes:
        if header.kind == KIND_GROUP:
            if header.epoch not in self.group_keys:
                raise ForgedMessageError(f"no household group key for epoch {header.epoch}")
            return self.group_keys[header.epoch]
        if cert is None:
            raise NotAMemberError(f"device {header.sender} is not a known household member")
        try:
            return _pair_key(self.identity, cert, self._pair_keys)
        except CryptoError:  # a key no honest device has (low order): nothing from it can be genuine
            raise ForgedMessageError(f"device {header.sender} has an unusable box key") from None
