"""Pairing's key schedule and sealing (see `pairing.py` for the exchange): one SPAKE2 output, four keys
(one per job), HMAC key confirmation over the transcript, and XChaCha20-Poly1305 bound to the session."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import nacl.bindings as sodium

from edge_agent.mesh.pairing_messages import PairingError

__all__ = ["VERSION", "Keys", "confirm", "context", "label", "seal", "spake_ids", "unseal"]

_ID_DEVICE, _ID_HUB = b"hearth-pair-device", b"hearth-pair-hub"
VERSION = b"hearth-pair-v2"


def context(invitation: str, session: str) -> bytes:
    """What every key, confirmation and sealed payload of one session is bound to."""
    return b"|".join([VERSION, invitation.encode(), session.encode()])


def spake_ids(context: bytes) -> tuple[bytes, bytes]:
    """SPAKE2 identities (device, hub): they enter the SPAKE2 transcript, so the key is per session."""
    return _ID_DEVICE + b"|" + context, _ID_HUB + b"|" + context


@dataclass(frozen=True)
class Keys:
    """One key per job, all from one SPAKE2 output: a MAC key is never also an encryption key."""

    confirm_hub: bytes
    confirm_device: bytes
    seal_request: bytes
    seal_welcome: bytes

    @classmethod
    def derive(cls, spake_key: bytes, context: bytes) -> Keys:
        def sub(label: bytes) -> bytes:
            return hashlib.blake2b(context, digest_size=32, key=spake_key, person=label).digest()

        return cls(sub(b"confirm-hub"), sub(b"confirm-device"), sub(b"seal-request"), sub(b"seal-welcome"))


def confirm(key: bytes, role: bytes, transcript: bytes) -> str:
    return hmac.new(key, VERSION + b"|confirm|" + role + b"|" + transcript, hashlib.sha256).hexdigest()


def label(kind: bytes, context: bytes) -> bytes:
    """Associated data of a sealed payload: what it is, and which session it belongs to."""
    return kind + b"|" + context


def seal(key: bytes, label: bytes, data: bytes) -> str:
    nonce = secrets.token_bytes(24)
    return (nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(data, label, nonce, key)).hex()


def unseal(key: bytes, label: bytes, hexdata: str) -> bytes:
    try:
        raw = bytes.fromhex(hexdata)
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(raw[24:], label, raw[:24], key)
    except Exception as exc:
        raise PairingError("sealed pairing data does not decrypt") from exc
