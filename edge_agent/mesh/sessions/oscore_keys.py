"""The OSCORE keys of a finished session handshake (RFC 9528 Appendix A.1), for the CoAP transport.

Master Secret = EDHOC_Exporter(0, h'', 16), Master Salt = EDHOC_Exporter(1, h'', 8); the initiator sends
with Sender ID = C_R and the responder with C_I (the connection identifier each side receives under).
16 bytes: the key length of AES-CCM-16-64-128, the algorithm EDHOC's cipher suite 2 names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Exporter", "OscoreMaterial", "material_from_exporter"]

_SECRET_LABEL, _SALT_LABEL = 0, 1
_SECRET_BYTES, _SALT_BYTES = 16, 8

Exporter = Callable[[int, bytes, int], bytes]
"""A finished EDHOC handshake's exporter: (label, context, length) -> bytes."""


@dataclass(frozen=True, slots=True, repr=False)
class OscoreMaterial:
    """What both ends of one handshake derive an OSCORE context from (secret: never logged)."""

    master_secret: bytes
    master_salt: bytes
    sender_id: bytes
    recipient_id: bytes

    def __repr__(self) -> str:
        return f"OscoreMaterial(sender_id={self.sender_id.hex()}, recipient_id={self.recipient_id.hex()})"


def material_from_exporter(export: Exporter, *, initiator: bool, c_i: bytes, c_r: bytes) -> OscoreMaterial:
    if c_i == c_r:
        raise ValueError("the two connection identifiers of a handshake must differ")
    secret = bytes(export(_SECRET_LABEL, b"", _SECRET_BYTES))
    salt = bytes(export(_SALT_LABEL, b"", _SALT_BYTES))
    sender, recipient = (c_r, c_i) if initiator else (c_i, c_r)
    return OscoreMaterial(secret, salt, sender, recipient)
