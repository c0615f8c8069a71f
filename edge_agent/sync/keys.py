"""The household's update keys: a key set signed by the household root.

The root (the hub's household key) signs only this list; packs are signed day to day by k of its n
update keys, so one stolen update key cannot publish a pack and the root stays out of routine work.
Rotation is a new key set with a higher version; keys it drops are listed as revoked so a signature by
them gets its own error instead of "unknown key".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, Self

from nacl.signing import SigningKey, VerifyKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from edge_agent.sync.signing import KEY_ID, canonical_json, key_id, seal

__all__ = ["KEY_SET_TYPE", "UpdateKey", "UpdateKeySet", "sign_key_set"]

KEY_SET_TYPE = "application/vnd.hearth.update-keys+json"


class UpdateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keyid: str = Field(pattern=KEY_ID)
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(min_length=1, max_length=64, description="Who holds it, e.g. 'hub' or 'alice-laptop'.")

    @classmethod
    def of(cls, key: VerifyKey, name: str) -> Self:
        return cls(keyid=key_id(key), public_key=bytes(key).hex(), name=name)

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(bytes.fromhex(self.public_key))


class UpdateKeySet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["update-keys"] = "update-keys"
    household_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    version: int = Field(ge=1, description="Grows by at least one with every rotation.")
    threshold: int = Field(ge=1, le=16)
    keys: list[UpdateKey] = Field(min_length=1, max_length=16)
    revoked: list[str] = Field(default_factory=list, max_length=256)
    issued_at: AwareDatetime
    """Signed dates carry their zone: a naive one cannot be compared with now (refused at parse)."""
    expires_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [k.keyid for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("a key is listed twice")
        if any(k.keyid != key_id(k.verify_key) for k in self.keys):
            raise ValueError("a key id does not match its public key")
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} is more than the {len(self.keys)} keys listed")
        if set(self.revoked) & set(ids):
            raise ValueError("a key is both listed and revoked")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires before it is issued")
        return self

    @property
    def verify_keys(self) -> dict[str, VerifyKey]:
        return {k.keyid: k.verify_key for k in self.keys}

    def canonical(self) -> bytes:
        return canonical_json(self)

    def rotated(
        self,
        keys: list[UpdateKey],
        threshold: int,
        *,
        now: datetime | None = None,
        valid_for: timedelta = timedelta(days=365),
    ) -> UpdateKeySet:
        """The next version: ``keys`` at ``threshold``; every key dropped is revoked for good."""
        now = now or datetime.now(UTC)
        dropped = {k.keyid for k in self.keys} - {k.keyid for k in keys}
        return UpdateKeySet(
            household_id=self.household_id,
            version=self.version + 1,
            threshold=threshold,
            keys=keys,
            revoked=sorted((set(self.revoked) | dropped) - {k.keyid for k in keys}),
            issued_at=now,
            expires_at=now + valid_for,
        )


def sign_key_set(key_set: UpdateKeySet, root: SigningKey) -> bytes:
    """The envelope devices trust: the key set's canonical bytes signed by the household root."""
    return seal(KEY_SET_TYPE, key_set.canonical(), [root])
