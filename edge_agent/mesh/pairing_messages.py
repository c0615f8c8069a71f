"""Pairing's wire messages and setup codes (see `pairing.py` for the exchange): what travels between
a new device and the hub, each bounded, and the codes a user types."""

from __future__ import annotations

import secrets

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.errors import HearthError
from edge_agent.mesh.household import DeviceCertificate, RevocationList, usable_box_key
from edge_agent.tasks import Task

__all__ = [
    "CODE_DIGITS",
    "SESSION_PATTERN",
    "DeviceRequest",
    "PairChallenge",
    "PairHello",
    "PairProof",
    "PairWelcome",
    "PairingError",
    "Welcome",
    "WrongCodeError",
    "new_code",
    "new_session",
    "validate_code",
]

CODE_DIGITS = 8
SESSION_PATTERN = r"^[0-9a-f]{32}$"
_TRIVIAL = {"12345678", "87654321", "01234567", "76543210", "12341234", "11223344", "12121212"}


class PairingError(HearthError):
    """Pairing cannot proceed (wrong code, expired or exhausted invitation, bad message)."""

    exit_code = 2


class WrongCodeError(PairingError):
    """A proof's key confirmation does not verify: a wrong code, or a sender without the session key."""


def new_session() -> str:
    """A pairing session id: 128 random bits, so nobody can guess it. It is also the device's MQTT
    client id on the pairing listener, whose ``%c`` ACLs keep the session's topics to that connection."""
    return secrets.token_hex(16)


def validate_code(code: str) -> str:
    """Normalize ``1234-5678`` to ``12345678``; refuse malformed or trivially guessable codes."""
    digits = code.replace("-", "").replace(" ", "")
    if len(digits) != CODE_DIGITS or not digits.isdigit():
        raise PairingError(f"a setup code is {CODE_DIGITS} digits, like 4827-1930 (got {code!r})")
    if len(set(digits)) == 1 or digits in _TRIVIAL:
        raise PairingError(f"setup code {code!r} is trivially guessable; use `hearth household invite`")
    return digits


def new_code() -> str:
    while True:
        digits = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        try:
            validate_code(digits)
        except PairingError:
            continue
        return f"{digits[:4]}-{digits[4:]}"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairHello(_Msg):
    type: str = Field(default="pair-hello", pattern="^pair-hello$")
    invitation: str = Field(pattern=r"^[0-9a-f]{16}$")
    session: str = Field(pattern=SESSION_PATTERN)
    spake: str = Field(pattern=r"^[0-9a-f]{66}$")


class PairChallenge(_Msg):
    type: str = Field(default="pair-challenge", pattern="^pair-challenge$")
    spake: str = Field(pattern=r"^[0-9a-f]{66}$")
    confirm: str = Field(pattern=r"^[0-9a-f]{64}$")


class PairProof(_Msg):
    type: str = Field(default="pair-proof", pattern="^pair-proof$")
    confirm: str = Field(pattern=r"^[0-9a-f]{64}$")
    sealed: str = Field(max_length=8192, pattern=r"^[0-9a-f]+$")


class PairWelcome(_Msg):
    type: str = Field(default="pair-welcome", pattern="^pair-welcome$")
    sealed: str = Field(max_length=65536, pattern=r"^[0-9a-f]+$")


class DeviceRequest(_Msg):
    sign_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    box_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(min_length=1, max_length=64)
    profile: str = Field(min_length=1, max_length=63)
    requests: list[Task]
    serves: list[Task]
    tls_key: str | None = Field(default=None, max_length=1024)
    """PEM public key for the broker client certificate (see broker_pki); sealed, so the code binds it."""

    @field_validator("box_key")
    @classmethod
    def _usable_box_key(cls, value: str) -> str:
        if not usable_box_key(bytes.fromhex(value)):
            raise ValueError("box_key is a low-order X25519 point; refusing to certify it")
        return value


class Welcome(_Msg):
    certificate: DeviceCertificate
    root_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    crl: RevocationList
    group_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    group_epoch: int = Field(ge=0)
    roster: list[DeviceCertificate] = Field(default_factory=list, max_length=256)
    """Certificates of current members, so the new device trusts them before their next presence."""
    broker_cert: str | None = Field(default=None, max_length=8192)
    """PEM client certificate for the broker (CN = device id), when the hub runs the broker CA."""
    broker_ca: str | None = Field(default=None, max_length=8192)
    """PEM broker CA the device pins from now on."""
