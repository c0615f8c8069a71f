"""The session AEAD: AES-256-GCM where the CPU has AES instructions (x86 AES-NI, ARMv8 crypto
extensions), ChaCha20-Poly1305 elsewhere (constant time in software, and faster there). Both ends say
whether they have AES hardware inside the authenticated handshake; AES-GCM only when both do.
Nonces are the frame counter (never random: each key is used by one sender, from 0 upwards)."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

__all__ = ["AES_GCM", "CHACHA20_POLY1305", "SessionCipher", "has_aes_instructions"]

AES_GCM, CHACHA20_POLY1305 = "aes-256-gcm", "chacha20-poly1305"
_NONCE = struct.Struct(">4xQ")


@functools.cache
def has_aes_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU announces AES instructions (the ``aes`` flag on x86 and ARM Linux alike)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and "aes" in value.split():
            return True
    return False


class SessionCipher:
    """One direction's key: seal with counter ``n``, open a frame claiming counter ``n``."""

    __slots__ = ("_aead", "name")

    def __init__(self, key: bytes, name: str) -> None:
        self.name = name
        self._aead = AESGCM(key) if name == AES_GCM else ChaCha20Poly1305(key)

    def seal(self, counter: int, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(_NONCE.pack(counter), plaintext, aad)

    def open(self, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
        """Raises cryptography.exceptions.InvalidTag."""
        return self._aead.decrypt(_NONCE.pack(counter), ciphertext, aad)
