"""Signed envelopes: a DSSE-style wrapper (payload type + payload bytes + k signatures).

Signatures cover DSSE's pre-authentication encoding of the payload type and the exact payload bytes,
so a payload is checked before it is parsed, and a key-set signature can never pass for a manifest's.
Counting is python-tuf's: distinct listed keys with a valid signature, unlisted keys ignored; when the
count falls short, the error names the most telling reason (edited, revoked, unknown, too few).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping

import blake3
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import (
    BelowThresholdError,
    MalformedUpdateError,
    RevokedUpdateKeyError,
    UnknownUpdateKeyError,
    UnsignedUpdateError,
    UpdateSignatureError,
)

__all__ = [
    "Signature",
    "SignedEnvelope",
    "add_signature",
    "canonical_json",
    "key_id",
    "open_envelope",
    "pae",
    "seal",
    "verify_threshold",
]

KEY_ID = r"^[0-9a-f]{32}$"
MAX_SIGNATURES = 16


def key_id(key: VerifyKey) -> str:
    """A key's id: the first 16 bytes of BLAKE3 over its public bytes."""
    return blake3.blake3(bytes(key)).digest()[:16].hex()


def canonical_json(model: BaseModel) -> bytes:
    """Sorted keys, no spaces: the same bytes for the same content, whatever the pydantic version."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keyid: str = Field(pattern=KEY_ID)
    sig: str = Field(pattern=r"^[0-9a-f]{128}$")


class SignedEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    payload_type: str = Field(max_length=80)
    payload: str = Field(max_length=4 << 20, description="Base64 of the exact signed bytes.")
    signatures: list[Signature] = Field(default_factory=list, max_length=MAX_SIGNATURES)


def seal(payload_type: str, payload: bytes, keys: Iterable[SigningKey]) -> bytes:
    message = pae(payload_type, payload)
    signatures = [Signature(keyid=key_id(k.verify_key), sig=k.sign(message).signature.hex()) for k in keys]
    envelope = SignedEnvelope(
        payload_type=payload_type, payload=base64.b64encode(payload).decode(), signatures=signatures
    )
    return envelope.model_dump_json().encode()


def add_signature(data: bytes, payload_type: str, key: SigningKey, *, max_bytes: int, what: str) -> bytes:
    """``data`` with one more signature (k-of-n: each key holder signs in turn); one per key."""
    payload, signatures = open_envelope(data, payload_type, max_bytes=max_bytes, what=what)
    mine = key_id(key.verify_key)
    others = [s for s in signatures if s.keyid != mine]
    signature = Signature(keyid=mine, sig=key.sign(pae(payload_type, payload)).signature.hex())
    envelope = SignedEnvelope(
        payload_type=payload_type, payload=base64.b64encode(payload).decode(), signatures=[*others, signature]
    )
    return envelope.model_dump_json().encode()


def open_envelope(
    data: bytes, payload_type: str, *, max_bytes: int, what: str
) -> tuple[bytes, list[Signature]]:
    """The payload bytes and signatures of an envelope of ``payload_type``; nothing verified yet."""
    if len(data) > max_bytes:
        raise MalformedUpdateError(f"{what} is {len(data)} bytes; at most {max_bytes} are accepted")
    try:
        envelope = SignedEnvelope.model_validate_json(data)
        payload = base64.b64decode(envelope.payload, validate=True)
    except (ValidationError, binascii.Error, ValueError) as exc:
        raise MalformedUpdateError(f"{what} is not a signed envelope: {_first_error(exc)}") from None
    if envelope.payload_type != payload_type:
        raise MalformedUpdateError(
            f"{what} carries a {envelope.payload_type!r} payload, not {payload_type!r}"
        )
    return payload, envelope.signatures


def verify_threshold(
    payload_type: str,
    payload: bytes,
    signatures: list[Signature],
    keys: Mapping[str, VerifyKey],
    threshold: int,
    *,
    revoked: Iterable[str] = (),
    what: str,
) -> set[str]:
    """The ids of listed keys whose signatures verify, if at least ``threshold``; else the telling error."""
    if not signatures:
        raise UnsignedUpdateError(f"{what} is not signed")
    message = pae(payload_type, payload)
    gone = set(revoked)
    valid: set[str] = set()
    bad: list[str] = []
    revoked_seen: list[str] = []
    unknown: list[str] = []
    for s in signatures:
        key = keys.get(s.keyid)
        if key is None:
            (revoked_seen if s.keyid in gone else unknown).append(s.keyid)
            continue
        try:
            key.verify(message, bytes.fromhex(s.sig))
        except BadSignatureError:
            bad.append(s.keyid)
            continue
        valid.add(s.keyid)
    if len(valid) >= threshold:
        return valid
    got = f"{len(valid)} valid of {threshold} required"
    if bad:
        raise UpdateSignatureError(
            f"{what}: the signature of key {bad[0][:8]} does not verify; edited after signing? ({got})"
        )
    if revoked_seen:
        raise RevokedUpdateKeyError(f"{what} is signed by revoked key {revoked_seen[0][:8]} ({got})")
    if unknown and not valid:
        raise UnknownUpdateKeyError(
            f"{what} is signed only by keys this household does not list ({unknown[0][:8]}…)"
        )
    raise BelowThresholdError(f"{what} has {got} signatures")


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "document"
        return f"{where}: {err['msg']}"
    return str(exc)
