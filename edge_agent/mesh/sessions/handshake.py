"""One EDHOC handshake (RFC 9528, method 3: static DH both ways, cipher suite 2), through lakers.

    initiator                                responder
    message 1: ephemeral key X       ->
                                     <-      message 2: ephemeral key Y, its credential and statement
                                             (encrypted), MAC over the transcript
    message 3: its credential and    ->
    statement (encrypted), MAC

Forward secrecy comes from the ephemeral keys: the session keys depend on X*Y, which nobody keeps.
Each end proves its run credential by a static-DH MAC (so knowing one device's keys does not let
anyone pose as *another* device to it: no key-compromise impersonation), and the statement binds that
credential to a member (`credentials`). Session keys are exported (one per direction) with a context
naming the household, both devices and both runs, so a handshake cannot be moved to other ends.

Each side's connection identifier (C_I, C_R) is the index it receives a session's frames under (4
bytes, unique among its sessions), carried inside the handshake, so the same handshake can key OSCORE
(RFC 9528 Appendix A.1: the ids are the OSCORE sender and recipient ids) for the CoAP transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lakers
from lakers import CredentialTransfer, EADItem, EdhocInitiator, EdhocResponder

from edge_agent.errors import ForgedMessageError, MalformedMessageError
from edge_agent.mesh.sessions.aead import AES_GCM, CHACHA20_POLY1305, SessionCipher
from edge_agent.mesh.sessions.credentials import FLAG_AES, RunCredential
from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial, material_from_exporter

__all__ = ["EAD_STATEMENT", "Initiator", "Keys", "Responder", "VerifyPeer"]

EAD_STATEMENT = 26725
"""The EAD label of Hearth's credential statement (critical: an EDHOC peer that is not Hearth stops)."""
_LABEL_I2R, _LABEL_R2I = 128, 129
"""Exporter labels of the two directions' keys (EDHOC's OSCORE labels are 0 and 1)."""
_LAKERS_ERRORS = (ValueError, RuntimeError, TypeError, OverflowError)

VerifyPeer = Callable[[bytes, bytes | None], int]
"""Checks the peer's credential (CCS) against its statement; returns the statement's flags or raises."""


@dataclass(frozen=True, slots=True)
class Keys:
    """A finished handshake's keys, as the side that holds them uses them."""

    sender: SessionCipher
    receiver: SessionCipher
    oscore: OscoreMaterial
    """The same handshake's OSCORE keys (RFC 9528 A.1), for the CoAP transport."""


def _statement(items: list[EADItem] | None) -> bytes | None:
    for item in items or []:
        if item.label() == EAD_STATEMENT:
            value = item.value()
            return bytes(value) if value is not None else None
    return None


def _keys(
    edhoc: EdhocInitiator | EdhocResponder, context: bytes, both_aes: bool, *, c_i: bytes, c_r: bytes
) -> Keys:
    initiator = isinstance(edhoc, EdhocInitiator)
    name = AES_GCM if both_aes else CHACHA20_POLY1305
    i2r = SessionCipher(bytes(edhoc.edhoc_exporter(_LABEL_I2R, context, 32)), name)
    r2i = SessionCipher(bytes(edhoc.edhoc_exporter(_LABEL_R2I, context, 32)), name)
    oscore = material_from_exporter(edhoc.edhoc_exporter, initiator=initiator, c_i=c_i, c_r=c_r)
    return Keys(i2r, r2i, oscore) if initiator else Keys(r2i, i2r, oscore)


def _refused(who: str, exc: Exception) -> ForgedMessageError:
    return ForgedMessageError(f"session handshake with {who} failed: {exc}")


def connection_id(index: int) -> bytes:
    """A session index as an EDHOC connection identifier (and OSCORE id): 4 bytes, big-endian."""
    return index.to_bytes(4, "big")


class Initiator:
    def __init__(self, credential: RunCredential, peer: str, index: int) -> None:
        self.credential = credential
        self.peer = peer
        self.c_i = connection_id(index)
        self.c_r = b""
        self._edhoc = EdhocInitiator()

    def message_1(self) -> bytes:
        return bytes(self._edhoc.prepare_message_1(c_i=self.c_i))

    def message_3(self, message_2: bytes, verify_peer: VerifyPeer, context: bytes) -> tuple[bytes, Keys]:
        """Check the responder and answer it; raises ForgedMessageError or MalformedMessageError."""
        try:
            c_r, id_cred_r, ead_2 = self._edhoc.parse_message_2(message_2)
            ccs = bytes(lakers.credential_check_or_fetch(id_cred_r, None))
            self.c_r = bytes(c_r)
        except _LAKERS_ERRORS as exc:
            raise _refused(self.peer[:8], exc) from None
        flags = verify_peer(ccs, _statement(ead_2))
        own = self.credential
        try:
            self._edhoc.verify_message_2(own.private_key, own.ccs, ccs)
            message_3, _ = self._edhoc.prepare_message_3(
                CredentialTransfer.ByValue, [EADItem(EAD_STATEMENT, True, own.statement)]
            )
            self._edhoc.completed_without_message_4()
        except _LAKERS_ERRORS as exc:
            raise _refused(self.peer[:8], exc) from None
        both_aes = bool(flags & FLAG_AES and own.statement[0] & FLAG_AES)
        return bytes(message_3), _keys(self._edhoc, context, both_aes, c_i=self.c_i, c_r=self.c_r)


class Responder:
    def __init__(self, credential: RunCredential, peer: str, index: int) -> None:
        self.credential = credential
        self.peer = peer
        self.c_i = b""
        self.c_r = connection_id(index)
        self._edhoc = EdhocResponder(credential.private_key, credential.ccs)

    def message_2(self, message_1: bytes) -> bytes:
        own = self.credential
        try:
            c_i, _ = self._edhoc.process_message_1(message_1)
            self.c_i = bytes(c_i)
            return bytes(
                self._edhoc.prepare_message_2(
                    CredentialTransfer.ByValue, self.c_r, [EADItem(EAD_STATEMENT, True, own.statement)]
                )
            )
        except _LAKERS_ERRORS as exc:
            raise MalformedMessageError(f"session handshake message 1 from {self.peer[:8]}: {exc}") from None

    def finish(self, message_3: bytes, verify_peer: VerifyPeer, context: bytes) -> Keys:
        try:
            id_cred_i, ead_3 = self._edhoc.parse_message_3(message_3)
            ccs = bytes(lakers.credential_check_or_fetch(id_cred_i, None))
        except _LAKERS_ERRORS as exc:
            raise _refused(self.peer[:8], exc) from None
        flags = verify_peer(ccs, _statement(ead_3))
        try:
            self._edhoc.verify_message_3(ccs)
            self._edhoc.completed_without_message_4()
        except _LAKERS_ERRORS as exc:
            raise _refused(self.peer[:8], exc) from None
        both_aes = bool(flags & FLAG_AES and self.credential.statement[0] & FLAG_AES)
        return _keys(self._edhoc, context, both_aes, c_i=self.c_i, c_r=self.c_r)
