"""What this device trusts about model updates, and the only way to change it: bytes in, verified
objects out, nothing else (no files, no network, no clock but the one passed in).

Order of checks, as python-tuf's TrustedMetadataSet: size bound → envelope → signatures over the exact
payload bytes (threshold of the current key set) → only then the manifest is parsed → household,
expiry, class, sequence. Each refusal is its own error and leaves the trusted state as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from nacl.signing import VerifyKey
from pydantic import BaseModel, ValidationError

from edge_agent.errors import (
    ChunkDigestError,
    EndlessDataError,
    ExpiredUpdateError,
    MalformedUpdateError,
    RollbackError,
    UpdateError,
    WrongDeviceClassError,
)
from edge_agent.sync.digests import chunk_digest
from edge_agent.sync.keys import KEY_SET_TYPE, UpdateKeySet
from edge_agent.sync.limits import MAX_KEY_SET_BYTES, MAX_MANIFEST_ENVELOPE_BYTES
from edge_agent.sync.manifest import MANIFEST_TYPE, UpdateManifest
from edge_agent.sync.signing import key_id, open_envelope, verify_threshold
from edge_agent.tasks import DeviceClass

__all__ = ["TrustedUpdates", "unverified_manifest", "utc_now"]

M = TypeVar("M", bound=BaseModel)


def utc_now() -> datetime:
    return datetime.now(UTC)


class TrustedUpdates:
    """The household root, the newest verified update key set, and the highest sequence installed per
    model name."""

    def __init__(
        self,
        root_key: VerifyKey,
        household_id: str,
        *,
        installed: Mapping[str, int] | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.root_key = root_key
        self.household_id = household_id
        self.key_set: UpdateKeySet | None = None
        self.installed: dict[str, int] = dict(installed or {})
        self.now = now

    # -- key sets -----------------------------------------------------------------------------------

    def update_key_set(self, data: bytes) -> UpdateKeySet:
        """Trust a root-signed key set newer than the current one."""
        key_set = self._root_signed_key_set(data)
        if key_set.expires_at <= self.now():
            raise ExpiredUpdateError(
                f"update key set version {key_set.version} expired {key_set.expires_at:%Y-%m-%d %H:%M}"
            )
        self.key_set = key_set
        return key_set

    def restore_key_set(self, data: bytes) -> UpdateKeySet:
        """Reload the key set this device saved: signature and household re-checked, but an expired one
        is still the newest known (manifests are refused until a newer one arrives; the agent runs on)."""
        self.key_set = self._root_signed_key_set(data)
        return self.key_set

    def _root_signed_key_set(self, data: bytes) -> UpdateKeySet:
        payload, signatures = open_envelope(
            data, KEY_SET_TYPE, max_bytes=MAX_KEY_SET_BYTES, what="update key set"
        )
        verify_threshold(
            KEY_SET_TYPE, payload, signatures, {key_id(self.root_key): self.root_key}, 1,
            what="update key set (root signature)",
        )  # fmt: skip
        key_set = _parse(UpdateKeySet, payload, "update key set")
        if key_set.household_id != self.household_id:
            raise MalformedUpdateError(f"update key set is for household {key_set.household_id}, not ours")
        if self.key_set is not None and key_set.version <= self.key_set.version:
            raise RollbackError(
                f"update key set version {key_set.version} is not above the trusted {self.key_set.version}"
            )
        return key_set

    # -- manifests ----------------------------------------------------------------------------------

    def verify_manifest(self, data: bytes, device_class: DeviceClass) -> UpdateManifest:
        """A manifest this device may install: verified, parsed and checked; trusted state unchanged."""
        if self.key_set is None:
            raise UpdateError("no update key set is trusted yet: the hub publishes one with the first pack")
        keys = self.key_set
        payload, signatures = open_envelope(
            data, MANIFEST_TYPE, max_bytes=MAX_MANIFEST_ENVELOPE_BYTES, what="manifest"
        )
        verify_threshold(
            MANIFEST_TYPE, payload, signatures, keys.verify_keys, keys.threshold,
            revoked=keys.revoked, what="manifest",
        )  # fmt: skip
        now = self.now()
        if keys.expires_at <= now:
            raise ExpiredUpdateError(
                f"the update key set (version {keys.version}) expired; ask the hub for a new one"
            )
        manifest = _parse(UpdateManifest, payload, "manifest")
        label = f"{manifest.pack_id} sequence {manifest.sequence}"
        if manifest.household_id != self.household_id:
            raise MalformedUpdateError(f"manifest {label} is for household {manifest.household_id}, not ours")
        if manifest.expires_at <= now:
            raise ExpiredUpdateError(f"manifest {label} expired {manifest.expires_at:%Y-%m-%d %H:%M}")
        if device_class not in manifest.device_classes:
            raise WrongDeviceClassError(
                f"manifest {label} is for {', '.join(manifest.device_classes)}, not a {device_class}"
            )
        have = self.installed.get(manifest.name, 0)
        if manifest.sequence < have:
            raise RollbackError(f"manifest {label} is older than the installed sequence {have}")
        if manifest.sequence == have:
            raise RollbackError(f"manifest {label} is the installed sequence again (a replay)")
        return manifest

    def accept_installed(self, manifest: UpdateManifest) -> None:
        """Record an activated pack: from now on nothing at or below its sequence is accepted."""
        have = self.installed.get(manifest.name, 0)
        if manifest.sequence <= have:
            raise RollbackError(
                f"{manifest.name} sequence {manifest.sequence} is not above the installed {have}"
            )
        self.installed[manifest.name] = manifest.sequence

    # -- data ---------------------------------------------------------------------------------------

    @staticmethod
    def verify_chunk(manifest: UpdateManifest, index: int, data: bytes | memoryview) -> None:
        """Chunk ``index`` is exactly what the manifest signed (length first, then digest)."""
        if not 0 <= index < len(manifest.chunks):
            raise MalformedUpdateError(f"chunk {index} does not exist ({len(manifest.chunks)} chunks)")
        expected = manifest.chunk_length(index)
        if len(data) > expected:
            raise EndlessDataError(f"chunk {index} is {len(data)} bytes; the manifest signed {expected}")
        if len(data) < expected or chunk_digest(data).hex() != manifest.chunks[index]:
            raise ChunkDigestError(f"chunk {index} of {manifest.pack_id} is not the one the manifest signed")


def unverified_manifest(data: bytes, what: str) -> UpdateManifest:
    """The manifest inside an envelope, signatures NOT checked: for showing what is stored and for
    seeding this device's own copies (every receiver verifies); never for deciding to install."""
    payload, _ = open_envelope(data, MANIFEST_TYPE, max_bytes=MAX_MANIFEST_ENVELOPE_BYTES, what=what)
    return _parse(UpdateManifest, payload, what)


def _parse(model: type[M], payload: bytes, what: str) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "document"
        raise MalformedUpdateError(f"{what} is signed but not valid: {where}: {err['msg']}") from None
