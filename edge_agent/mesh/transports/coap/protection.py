"""OSCORE (RFC 8613) as the message lane uses it: one profile, the keys of one Hearth session.

aiocoap implements all of OSCORE (group modes, proxies, Echo recovery, persisted contexts) and pays for
it on every message: a deepcopy of the message per step, typed options, debug logging of the message's
repr; measured, its protect + unprotect of a 200-byte request and its response cost ~0.5 ms on this
project's 2-core VM, as much as a whole round trip through Mosquitto. Hearth needs one profile:
AES-CCM-16-64-128 (EDHOC cipher suite 2), key ids of 4 bytes (session indexes), no ID context, no
Class I options, a replay window in memory for the life of the session. That is this module, with
the AEAD from ``cryptography``; `tests/test_coap_oscore.py` checks it against aiocoap's implementation
in both directions and against RFC 8613 Appendix C's test vectors.

A context lives as long as the session it came from (`Session.coap`): its sequence number and replay
window are that session's alone, never copied or persisted, so a restart makes new keys rather than
reusing a nonce.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.transports.coap.wire import Code

__all__ = [
    "ALGORITHM",
    "REPLAY_WINDOW",
    "OscoreContext",
    "ProtectionError",
    "RequestId",
    "parse_option",
]

ALGORITHM = 10
"""AES-CCM-16-64-128 (COSE algorithm 10): the one EDHOC's cipher suite 2 names."""
_KEY, _NONCE, _TAG = 16, 13, 8
_MAX_ID = _NONCE - 6
REPLAY_WINDOW = 32
_MAX_SEQ = (1 << 40) - 1


class ProtectionError(Exception):
    """A protected message that does not open; ``code`` and ``diagnostic`` are what RFC 8613 §8 has
    the server answer, unprotected."""

    def __init__(self, code: int, diagnostic: str) -> None:
        super().__init__(f"{Code.text(code)} {diagnostic}")
        self.code = code
        self.diagnostic = diagnostic


@dataclass(frozen=True, slots=True)
class RequestId:
    """What a response is bound to: the request's key id and partial IV (its nonce and AAD)."""

    kid: bytes
    piv: bytes


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    return bytes([major << 5 | 25]) + n.to_bytes(2, "big")


def _bstr(b: bytes) -> bytes:
    return _head(2, len(b)) + b


def _tstr(s: str) -> bytes:
    data = s.encode()
    return _head(3, len(data)) + data


def _derive(material: OscoreMaterial, id_: bytes, kind: str, length: int) -> bytes:
    """RFC 8613 §3.2.1: info = [id, id_context (null), alg_aead, type, L]."""
    info = b"\x85" + _bstr(id_) + b"\xf6" + _head(0, ALGORITHM) + _tstr(kind) + _head(0, length)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=material.master_salt, info=info)
    return hkdf.derive(material.master_secret)


def _aad(request: RequestId) -> bytes:
    """The Enc_structure (RFC 8613 §5.4): ["Encrypt0", h'', external_aad] with no Class I options."""
    external = b"\x85\x01\x81" + _head(0, ALGORITHM) + _bstr(request.kid) + _bstr(request.piv) + b"\x40"
    return b"\x83\x68Encrypt0\x40" + _bstr(external)


def parse_option(value: bytes) -> tuple[bytes, bytes | None]:
    """(partial IV, key id or None) of an OSCORE option value (RFC 8613 §6.1); raises ProtectionError
    (4.02) for what this profile does not take: an ID context, a reserved bit, a partial IV past 5
    bytes, a key id past 7."""
    if not value:
        return b"", None
    flags = value[0]
    n = flags & 0x07
    if flags & 0xE0 or flags & 0x10 or n > 5:
        raise ProtectionError(Code.BAD_OPTION, "unsupported OSCORE option")
    if 1 + n > len(value):
        raise ProtectionError(Code.BAD_OPTION, "truncated OSCORE option")
    piv = value[1 : 1 + n]
    if not flags & 0x08:
        if len(value) != 1 + n:
            raise ProtectionError(Code.BAD_OPTION, "unsupported OSCORE option")
        return piv, None
    kid = value[1 + n :]
    if len(kid) > _MAX_ID:
        raise ProtectionError(Code.BAD_OPTION, "unsupported OSCORE option")
    return piv, kid


class OscoreContext:
    """One OSCORE security context with one member's run (RFC 8613 §3), in memory.

    ``peer`` is who the session handshake proved; whoever acts on a message must still check that
    device is a member *now*."""

    def __init__(self, material: OscoreMaterial, peer: str, run: str = "") -> None:
        if max(len(material.sender_id), len(material.recipient_id)) > _MAX_ID:
            raise ValueError(f"an OSCORE id of AES-CCM-16-64-128 is at most {_MAX_ID} bytes")
        if material.sender_id == material.recipient_id:
            raise ValueError("an OSCORE context's sender and recipient ids must differ")
        self.sender_id = material.sender_id
        self.recipient_id = material.recipient_id
        self._seal = AESCCM(_derive(material, material.sender_id, "Key", _KEY), _TAG)
        self._open = AESCCM(_derive(material, material.recipient_id, "Key", _KEY), _TAG)
        self._iv = _derive(material, b"", "IV", _NONCE)
        self.sequence = 0
        """The next partial IV this end sends (never reused: the keys die with the session)."""
        self._top = -1
        self._seen = 0
        """Replay window: the highest sequence number opened, and a bit per number below it."""
        self.peer = peer
        self.run = run
        """The peer's run the session is with (a reply goes back to that run only)."""

    def _nonce(self, id_piv: bytes, piv: bytes) -> bytes:
        padded = bytes([len(id_piv)]) + id_piv.rjust(_MAX_ID, b"\0") + piv.rjust(5, b"\0")
        return (int.from_bytes(padded, "big") ^ int.from_bytes(self._iv, "big")).to_bytes(_NONCE, "big")

    # -- the requesting end ---------------------------------------------------------------------------

    def protect_request(self, plaintext: bytes) -> tuple[bytes, bytes, RequestId]:
        """(OSCORE option value, ciphertext, what the response is bound to) for a new request."""
        seq = self.sequence
        if seq > _MAX_SEQ:
            raise ProtectionError(Code.UNAVAILABLE, "sequence numbers exhausted")
        self.sequence = seq + 1
        piv = seq.to_bytes(5, "big").lstrip(b"\0") or b"\0"
        request = RequestId(self.sender_id, piv)
        sealed = self._seal.encrypt(self._nonce(self.sender_id, piv), plaintext, _aad(request))
        return bytes([0x08 | len(piv)]) + piv + self.sender_id, sealed, request

    def unprotect_response(self, request: RequestId, option: bytes, ciphertext: bytes) -> bytes:
        """The plaintext of a response to ``request`` (its nonce: no partial IV of its own)."""
        piv, _ = parse_option(option)
        nonce = self._nonce(self.recipient_id, piv) if piv else self._nonce(request.kid, request.piv)
        try:
            return self._open.decrypt(nonce, ciphertext, _aad(request))
        except InvalidTag:
            raise ProtectionError(Code.BAD_REQUEST, "Decryption failed") from None

    # -- the serving end ------------------------------------------------------------------------------

    def unprotect_request(self, piv: bytes, ciphertext: bytes) -> tuple[bytes, RequestId]:
        """The plaintext of a request under partial IV ``piv``; a replay or a forgery raises
        ProtectionError and leaves the window as it was."""
        if not piv:
            raise ProtectionError(Code.BAD_REQUEST, "Decryption failed")
        seq = int.from_bytes(piv, "big")
        if seq <= self._top - REPLAY_WINDOW or (seq <= self._top and self._seen >> (self._top - seq) & 1):
            raise ProtectionError(Code.UNAUTHORIZED, "Replay detected")
        request = RequestId(self.recipient_id, piv)
        try:
            plaintext = self._open.decrypt(self._nonce(self.recipient_id, piv), ciphertext, _aad(request))
        except InvalidTag:
            raise ProtectionError(Code.BAD_REQUEST, "Decryption failed") from None
        if seq > self._top:
            shift = seq - self._top
            kept = self._seen << shift if shift < REPLAY_WINDOW else 0
            self._seen = (kept | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._top = seq
        else:
            self._seen |= 1 << (self._top - seq)
        return plaintext, request

    def protect_response(self, request: RequestId, plaintext: bytes) -> tuple[bytes, bytes]:
        """(OSCORE option value, ciphertext) of the response to ``request``: the request's nonce is
        reused (RFC 8613 §5.2: this end's key differs), so the option is empty."""
        return b"", self._seal.encrypt(self._nonce(request.kid, request.piv), plaintext, _aad(request))

    def __repr__(self) -> str:
        ids = f"sid={self.sender_id.hex()} rid={self.recipient_id.hex()}"
        return f"<OscoreContext peer={self.peer[:8]} {ids}>"
