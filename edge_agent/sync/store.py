"""This device's update state on disk, under ``<mesh state dir>/updates/`` (0700).

    update-key.json        this device's update signing key, if it holds one (0600, secret)
    key-set.json           the newest root-signed update key set (the envelope as received)
    installed.json         highest installed sequence per model name
    manifests/<name>-<sequence>.json   signed manifests known here (published, fetched or installed)

Everything read back is verified again (`TrustedUpdates`); a stored file that no longer verifies (an
expired manifest, a corrupt file) is reported and skipped, never fatal (aktualizr#1185: an expired
manifest in storage wedged the client).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import IdentityError, UpdateError
from edge_agent.mesh.files import read_private, write_atomic, write_private
from edge_agent.mesh.state import private_dir
from edge_agent.sync.keys import UpdateKey
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.trust import TrustedUpdates, utc_now

__all__ = ["UpdateStore"]

log = logging.getLogger(__name__)


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    name: str = Field(min_length=1, max_length=64)
    seed: str = Field(pattern=r"^[0-9a-f]{64}$")


class UpdateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = private_dir(state_dir / "updates")
        self.manifests_dir = private_dir(self.dir / "manifests")

    @property
    def key_path(self) -> Path:
        return self.dir / "update-key.json"

    @property
    def key_set_path(self) -> Path:
        return self.dir / "key-set.json"

    @property
    def installed_path(self) -> Path:
        return self.dir / "installed.json"

    # -- this device's update key --------------------------------------------------------------------

    def create_signing_key(self, name: str) -> UpdateKey:
        if self.key_path.exists():
            raise UpdateError(f"{self.key_path} already holds this device's update key; it is kept")
        key = SigningKey.generate()
        write_private(self.key_path, _KeyFile(name=name, seed=bytes(key).hex()).model_dump_json())
        return UpdateKey.of(key.verify_key, name)

    def signing_key(self) -> tuple[SigningKey, UpdateKey]:
        try:
            data = _KeyFile.model_validate_json(read_private(self.key_path))
        except FileNotFoundError:
            raise UpdateError(
                "this device holds no update key: run `hearth household update-key create` here, "
                "then have the hub list it with `hearth household update-keys set`"
            ) from None
        except ValidationError as exc:
            raise IdentityError(
                f"{self.key_path}: unreadable update key ({exc.errors()[0]['msg']})"
            ) from None
        key = SigningKey(bytes.fromhex(data.seed))
        return key, UpdateKey.of(key.verify_key, data.name)

    # -- trust ---------------------------------------------------------------------------------------

    def load_trust(
        self, root_key: VerifyKey, household_id: str, *, now: Callable[[], datetime] = utc_now
    ) -> tuple[TrustedUpdates, list[str]]:
        """The verifier as saved here, and what could not be restored (reported, never raised)."""
        problems: list[str] = []
        installed: dict[str, int] = {}
        if self.installed_path.exists():
            try:
                raw = json.loads(self.installed_path.read_text(encoding="utf-8"))
                installed = {str(k): int(v) for k, v in raw.items() if int(v) > 0}
            except (OSError, ValueError, AttributeError) as exc:
                problems.append(f"{self.installed_path}: unreadable ({exc}); sequences start from 0")
        trusted = TrustedUpdates(root_key, household_id, installed=installed, now=now)
        if self.key_set_path.exists():
            try:
                trusted.restore_key_set(self.key_set_path.read_bytes())
            except (OSError, UpdateError) as exc:
                problems.append(f"{self.key_set_path}: {exc}")
        for problem in problems:
            log.warning("update state: %s", problem)
        return trusted, problems

    def save_key_set(self, data: bytes) -> None:
        """Save a key-set envelope (already verified by `TrustedUpdates.update_key_set`)."""
        write_atomic(self.key_set_path, data.decode(), 0o644)

    def save_installed(self, trusted: TrustedUpdates) -> None:
        write_atomic(self.installed_path, json.dumps(trusted.installed, sort_keys=True), 0o644)

    # -- manifests -----------------------------------------------------------------------------------

    def manifest_path(self, manifest: UpdateManifest) -> Path:
        return self.manifests_dir / f"{manifest.name}-{manifest.sequence}.json"

    def save_manifest(self, manifest: UpdateManifest, data: bytes) -> Path:
        path = self.manifest_path(manifest)
        write_atomic(path, data.decode(), 0o644)
        return path

    def stored_manifests(self) -> Iterator[tuple[Path, bytes]]:
        for path in sorted(self.manifests_dir.glob("*.json")):
            try:
                yield path, path.read_bytes()
            except OSError as exc:
                log.warning("update state: cannot read %s (%s); skipped", path, exc)
