"""This device's session credential for one run, and the statement that binds it to the household.

EDHOC (RFC 9528, method 3) authenticates each end by a static Diffie-Hellman key in a CCS credential
(a CBOR claims set, RFC 8392). Hearth makes that key fresh at every start and never writes it down:
it is "static" only for the run. What makes it trustworthy is a *statement*, an Ed25519 signature by
the device key its household certificate names, over the household, the device, the run, the AEADs it
can run fast and the credential's digest. The statement travels inside the handshake (EAD items of
messages 2 and 3, encrypted), so a device needs nothing but the certificates from pairing to check
its peer: pairing stays the one act of trust, and there is one signature per run and side, none per
frame.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.exceptions import BadSignatureError

from edge_agent.errors import ForgedMessageError, MalformedMessageError
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.identity import DeviceIdentity

__all__ = ["FLAG_AES", "RunCredential", "statement_input", "verify_statement"]

_CONTEXT = b"hearth session credential v2"
FLAG_AES = 0x01
"""The statement's flags byte: this device has AES instructions (AES-GCM is then fast for it)."""
STATEMENT_BYTES = 1 + 64
MAX_CREDENTIAL_BYTES = 256


def statement_input(household: str, device: str, run: str, flags: int, ccs: bytes) -> bytes:
    """What a device signs for its run's credential."""
    digest = hashlib.sha256(ccs).digest()
    return b"\n".join([_CONTEXT, household.encode(), device.encode(), run.encode(), bytes([flags]), digest])


@dataclass(frozen=True)
class RunCredential:
    """A P-256 key pair made for one run, its CCS, and the signed statement binding it."""

    private_key: bytes
    ccs: bytes
    statement: bytes
    run: str

    @classmethod
    def make(cls, identity: DeviceIdentity, household: str, run: str, *, aes: bool) -> RunCredential:
        numbers = ec.generate_private_key(ec.SECP256R1()).private_numbers()
        public = numbers.public_numbers
        x, y = public.x.to_bytes(32, "big"), public.y.to_bytes(32, "big")
        cose_key = {1: 2, 2: b"\x00", -1: 1, -2: x, -3: y}  # EC2, kid, P-256
        ccs = cbor2.dumps({2: identity.device_id, 8: {1: cose_key}})
        flags = FLAG_AES if aes else 0
        signed = identity.signing_key.sign(statement_input(household, identity.device_id, run, flags, ccs))
        return cls(numbers.private_value.to_bytes(32, "big"), ccs, bytes([flags]) + signed.signature, run)


def verify_statement(
    cert: DeviceCertificate, household: str, run: str, ccs: bytes, statement: bytes | None
) -> int:
    """The flags of a peer's statement for ``ccs``, if its certificate's key signed it for this household
    and that run; raises ForgedMessageError (or MalformedMessageError for a statement of the wrong shape)."""
    if statement is None or len(statement) != STATEMENT_BYTES:
        raise MalformedMessageError(f"handshake from {cert.device_id[:8]} carries no credential statement")
    if len(ccs) > MAX_CREDENTIAL_BYTES:
        raise MalformedMessageError(
            f"handshake from {cert.device_id[:8]} carries a {len(ccs)}-byte credential"
        )
    flags = statement[0]
    try:
        cert.verify_key.verify(statement_input(household, cert.device_id, run, flags, ccs), statement[1:])
    except BadSignatureError:
        raise ForgedMessageError(
            f"the session credential offered as {cert.device_id[:8]} is not signed by its device key "
            "for this household and run"
        ) from None
    return flags
