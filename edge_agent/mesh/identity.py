"""This device's keys: an Ed25519 signing key and a separate X25519 key, created on first start.

Separate keys rather than converting one into the other (libsodium's advice). Stored owner-only
(directory 0700, file 0600); a key file readable by others is refused, as ssh does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey
from pydantic import AfterValidator

from edge_agent.errors import IdentityError
from edge_agent.mesh.files import read_private, write_private

DEVICE_ID_BYTES = 16


def _check_device_id(v: str) -> str:
    if len(v) != 2 * DEVICE_ID_BYTES or any(c not in "0123456789abcdef" for c in v):
        raise ValueError(f"device id must be {2 * DEVICE_ID_BYTES} lowercase hex characters")
    return v


DeviceId = Annotated[str, AfterValidator(_check_device_id)]
"""32 hex characters: BLAKE2b-128 of the device's Ed25519 public key (binds the id to the key)."""


def device_id_for(sign_key: VerifyKey) -> str:
    return hashlib.blake2b(bytes(sign_key), digest_size=DEVICE_ID_BYTES).hexdigest()


@dataclass(frozen=True)
class DeviceIdentity:
    signing_key: SigningKey
    box_key: PrivateKey

    @functools.cached_property
    def device_id(self) -> str:  # on every message sealed and opened: hash once
        return device_id_for(self.signing_key.verify_key)

    @property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.verify_key

    @property
    def public_box_key(self) -> PublicKey:
        return self.box_key.public_key

    @classmethod
    def generate(cls) -> DeviceIdentity:
        return cls(SigningKey.generate(), PrivateKey.generate())

    # -- storage -------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        data = json.dumps(
            {
                "version": 1,
                "device_id": self.device_id,
                "sign_seed": bytes(self.signing_key).hex(),
                "box_secret": bytes(self.box_key).hex(),
            }
        )
        write_private(path, data)

    @classmethod
    def load(cls, path: Path) -> DeviceIdentity:
        try:
            data = read_private(path)  # refuses a symlink or a file others can read
        except FileNotFoundError as exc:
            raise IdentityError(f"{path}: no device identity") from exc
        try:
            raw = json.loads(data)
            ident = cls(
                SigningKey(bytes.fromhex(raw["sign_seed"])), PrivateKey(bytes.fromhex(raw["box_secret"]))
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{path}: unreadable device identity ({exc})") from exc
        if raw.get("device_id") != ident.device_id:
            raise IdentityError(f"{path}: device_id does not match the stored key")
        return ident

    @classmethod
    def load_or_create(cls, path: Path) -> DeviceIdentity:
        """The identity at ``path``; a new one is generated and stored on first start."""
        if path.exists():
            return cls.load(path)
        ident = cls.generate()
        ident.save(path)
        return ident
