"""Household membership, Matter-fabric style but smaller.

The hub holds the household root key. A device is a member when it holds a root-signed certificate
(device id, both public keys, profile, what it may request and serve, expiry). The root also signs a
versioned revocation list; a revoked device is refused everywhere. Signatures cover canonical JSON
(sorted keys, no spaces) of every field but the signature itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal, Self

import nacl.bindings as sodium
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PublicKey
from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.errors import NotAMemberError
from edge_agent.mesh.identity import DeviceId, DeviceIdentity, device_id_for
from edge_agent.tasks import DeviceClass, Task

HEX32 = r"^[0-9a-f]{64}$"
HEX64 = r"^[0-9a-f]{128}$"


def canonical(model: BaseModel) -> bytes:
    """What a signature covers: every field but the signature, sorted, no spaces. Fields added after
    certificates were issued (``_UNSIGNED_WHEN_DEFAULT``) are left out while they hold their default,
    so a certificate signed before they existed still verifies, and means the default."""
    omit = {"signature"} | {
        name
        for name in getattr(model, "_UNSIGNED_WHEN_DEFAULT", ())
        if getattr(model, name) == type(model).model_fields[name].default
    }
    return json.dumps(
        model.model_dump(mode="json", exclude=omit), sort_keys=True, separators=(",", ":")
    ).encode()


_PROBE_SCALAR = hashlib.blake2b(b"hearth-box-key-probe", digest_size=32).digest()


def usable_box_key(key: bytes) -> bool:
    """False for an X25519 public key of low order (the all-zero shared secret with every peer):
    libsodium refuses to agree a key with it, so a certificate carrying one would make every device
    that opens its frames fail. Any clamped scalar shows it, so a fixed public one suffices."""
    try:
        sodium.crypto_scalarmult(_PROBE_SCALAR, key)
    except CryptoError:
        return False
    return True


def household_id_for(root_key: VerifyKey) -> str:
    return hashlib.blake2b(bytes(root_key), digest_size=8).hexdigest()


class _Signed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    signature: str = Field(default="", pattern=r"^([0-9a-f]{128})?$")

    def signed_by(self, key: SigningKey) -> Self:
        return self.model_copy(update={"signature": key.sign(canonical(self)).signature.hex()})

    def verify(self, key: VerifyKey) -> None:
        try:
            key.verify(canonical(self), bytes.fromhex(self.signature))
        except (BadSignatureError, ValueError) as exc:
            raise NotAMemberError(
                f"{type(self).__name__} signature does not verify against the household root"
            ) from exc


class DeviceCertificate(_Signed):
    type: Literal["device-cert"] = "device-cert"
    version: Literal[1] = 1
    household_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    serial: int = Field(ge=1)
    device_id: DeviceId
    sign_key: str = Field(pattern=HEX32)
    box_key: str = Field(pattern=HEX32)
    name: str = Field(min_length=1, max_length=64)
    profile: str = Field(min_length=1, max_length=63)
    device_class: DeviceClass = "appliance"
    """Certified by the root, so a device cannot claim to be a hub to attract offloaded prompts."""
    requests: list[Task] = Field(default_factory=list, description="Tasks it may ask peers to serve.")
    serves: list[Task] = Field(default_factory=list, description="Tasks it may serve for peers.")
    admin: bool = False
    may_correct: bool = False
    """May author shared translation corrections, which every device then prefers to any model: the
    operator's approval at pairing (`hearth household invite --may-correct`). An admin always may."""
    issued_at: datetime
    expires_at: datetime

    _UNSIGNED_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = ("may_correct",)

    @field_validator("box_key")
    @classmethod
    def _usable_box_key(cls, value: str) -> str:
        if not usable_box_key(bytes.fromhex(value)):
            raise ValueError("box key is a low-order X25519 point (no key can be agreed with it)")
        return value

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(bytes.fromhex(self.sign_key))

    @property
    def corrects(self) -> bool:
        """May author (and withdraw) the household's shared corrections: certified to, or an admin."""
        return self.may_correct or self.admin

    @property
    def public_box_key(self) -> PublicKey:
        return PublicKey(bytes.fromhex(self.box_key))


class RevocationList(_Signed):
    type: Literal["revocation-list"] = "revocation-list"
    household_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    version: int = Field(ge=0)
    revoked: list[DeviceId] = Field(default_factory=list)
    issued_at: datetime


class HouseholdRoot:
    """The root of trust, held by the hub (`hearth household init`)."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.household_id = household_id_for(key.verify_key)
        self._serial = 0
        self.crl = RevocationList(
            household_id=self.household_id, version=0, issued_at=datetime.now(UTC)
        ).signed_by(key)

    def issue(
        self,
        device: DeviceIdentity | tuple[VerifyKey, PublicKey],
        *,
        name: str,
        profile: str,
        requests: list[Task],
        serves: list[Task],
        device_class: DeviceClass = "appliance",
        admin: bool = False,
        may_correct: bool = False,
        valid_for: timedelta = timedelta(days=365),
        now: datetime | None = None,
    ) -> DeviceCertificate:
        sign_key, box_key = (
            (device.verify_key, device.public_box_key) if isinstance(device, DeviceIdentity) else device
        )
        now = now or datetime.now(UTC)
        self._serial += 1
        cert = DeviceCertificate(
            household_id=self.household_id,
            serial=self._serial,
            device_id=device_id_for(sign_key),
            sign_key=bytes(sign_key).hex(),
            box_key=bytes(box_key).hex(),
            name=name,
            profile=profile,
            device_class=device_class,
            requests=requests,
            serves=serves,
            admin=admin,
            may_correct=may_correct,
            issued_at=now,
            expires_at=now + valid_for,
        )
        return cert.signed_by(self.key)

    def revoke(self, *device_ids: str, now: datetime | None = None) -> RevocationList:
        revoked = sorted(set(self.crl.revoked) | set(device_ids))
        self.crl = RevocationList(
            household_id=self.household_id,
            version=self.crl.version + 1,
            revoked=revoked,
            issued_at=now or datetime.now(UTC),
        ).signed_by(self.key)
        return self.crl


class Membership:
    """What a device trusts: the pinned root key, known certificates, the newest revocation list."""

    def __init__(self, root_key: VerifyKey) -> None:
        self.root_key = root_key
        self.household_id = household_id_for(root_key)
        self.certs: dict[str, DeviceCertificate] = {}
        self.revoked: frozenset[str] = frozenset()
        self.crl_version = -1
        self.crl: RevocationList | None = None
        self._bounds: dict[str, tuple[DeviceCertificate, float, float]] = {}
        self.on_revoked: list[Callable[[frozenset[str]], None]] = []
        """Called with the newly revoked device ids whenever a newer CRL is applied (purge peers,
        fail their streams, forget their translation-memory entries)."""

    def add_certificate(self, cert: DeviceCertificate) -> None:
        """Verify and remember a certificate (from pairing or a peer's presence)."""
        if cert.household_id != self.household_id:
            raise NotAMemberError(f"certificate for {cert.device_id} belongs to another household")
        cert.verify(self.root_key)
        if device_id_for(cert.verify_key) != cert.device_id:
            raise NotAMemberError(f"certificate device id {cert.device_id} does not match its key")
        known = self.certs.get(cert.device_id)
        if known is None or cert.serial > known.serial:
            self.certs[cert.device_id] = cert

    def apply_revocations(self, crl: RevocationList) -> bool:
        """Accept a newer signed revocation list; older or equal versions are ignored (no rollback)."""
        if crl.household_id != self.household_id:
            raise NotAMemberError("revocation list belongs to another household")
        crl.verify(self.root_key)
        if crl.version <= self.crl_version:
            return False
        newly = frozenset(crl.revoked) - self.revoked
        self.crl_version = crl.version
        self.crl = crl
        self.revoked = frozenset(crl.revoked)
        if newly:
            for listener in list(self.on_revoked):
                listener(newly)
        return True

    def is_member(self, device_id: str) -> bool:
        """Whether ``device_id`` holds a valid, unrevoked certificate right now."""
        try:
            self.member(device_id)
        except NotAMemberError:
            return False
        return True

    def requests_of(self, device_id: str) -> list[Task]:
        """The tasks ``device_id``'s certificate allows it to request from peers ([] if unknown)."""
        cert = self.certs.get(device_id)
        return list(cert.requests) if cert is not None else []

    def member(self, device_id: str, now: datetime | None = None) -> DeviceCertificate:
        """The valid certificate of ``device_id``, or NotAMemberError saying why not."""
        if device_id in self.revoked:
            raise NotAMemberError(f"device {device_id} has been revoked")
        cert = self.certs.get(device_id)
        if cert is None:
            raise NotAMemberError(f"device {device_id} is not a known household member")
        # Checked on every message sent and opened: compare Unix seconds, converted once per cert.
        bounds = self._bounds.get(device_id)
        if bounds is None or bounds[0] is not cert:
            bounds = self._bounds[device_id] = (cert, cert.issued_at.timestamp(), cert.expires_at.timestamp())
        t = time.time() if now is None else now.timestamp()
        if not bounds[1] <= t < bounds[2]:
            raise NotAMemberError(
                f"certificate of {device_id} is not valid now (expires {cert.expires_at:%Y-%m-%d})"
            )
        return cert
