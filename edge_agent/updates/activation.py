"""Activate a received pack: check it, switch to it atomically keeping the previous one, run its health
check, and roll back on failure. Every outcome is a signed install report (Uptane's lesson: a device's
"success" is worth nothing unsigned).

Order: the staged files are checked against the verified manifest (no escapes, whole-file digests)
before anything parses them; then `pack.json` is read and the pack enters the store with the previous
version kept aside; the health check loads the new pack; only when it passes does the device's highest
installed sequence move; a quantized pack must also pass its quality reference on this CPU
(``host_gate``), since the publisher's CPU may compute int8 differently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import blake3
from nacl.signing import SigningKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import (
    ChunkDigestError,
    EngineError,
    HearthError,
    PackError,
    UnsafePackError,
    UpdateError,
)
from edge_agent.models.pack import MANIFEST_NAME, PackManifest
from edge_agent.models.store import InstalledPack, PackStore
from edge_agent.packs.host_gate import HostGate
from edge_agent.sync.manifest import UpdateManifest
from edge_agent.sync.pack_check import check_pack_dir
from edge_agent.sync.signing import canonical_json, seal
from edge_agent.sync.store import UpdateStore
from edge_agent.sync.trust import TrustedUpdates
from edge_agent.updates.health import probe, verdict

__all__ = ["INSTALL_REPORT_TYPE", "ActivationResult", "InstallReport", "activate"]

log = logging.getLogger(__name__)

INSTALL_REPORT_TYPE = "application/vnd.hearth.install-report+json"
Outcome = Literal["activated", "rolled-back", "refused"]


class InstallReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["install-report"] = "install-report"
    device_id: str
    household_id: str
    pack_id: str
    sequence: int
    merkle_root: str
    result: Outcome
    reason: str = Field(default="", max_length=500)
    at: datetime


@dataclass(frozen=True)
class ActivationResult:
    report: InstallReport
    signed_report: bytes
    pack: InstalledPack | None
    """What now serves this model here: the new pack, the previous one (rolled back), or None."""

    @property
    def activated(self) -> bool:
        return self.report.result == "activated"


def _check_files(staged: Path, manifest: UpdateManifest) -> None:
    check_pack_dir(staged, {f.path for f in manifest.files})
    for f in manifest.files:
        path = staged / f.path
        if path.stat().st_size != f.size:
            raise ChunkDigestError(f"{f.path}: {path.stat().st_size} bytes, the manifest signed {f.size}")
        with path.open("rb") as fh:
            digest = blake3.blake3(max_threads=1)
            while block := fh.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != f.digest:
            raise ChunkDigestError(f"{f.path}: not the file the manifest signed")


def _pack_manifest(staged: Path, manifest: UpdateManifest) -> PackManifest:
    try:
        pack = PackManifest.model_validate_json((staged / MANIFEST_NAME).read_bytes())
    except (OSError, ValidationError) as exc:
        raise UnsafePackError(
            f"{MANIFEST_NAME} of {manifest.pack_id} is not a valid pack manifest: {exc}"
        ) from None
    if pack.pack_id != manifest.pack_id or pack.task != manifest.task or pack.name != manifest.name:
        raise UnsafePackError(
            f"{MANIFEST_NAME} describes {pack.pack_id} ({pack.task}), the signed manifest {manifest.pack_id}"
        )
    return pack


def activate(
    manifest: UpdateManifest,
    envelope: bytes,
    staged: Path,
    *,
    store: PackStore,
    updates: UpdateStore,
    trusted: TrustedUpdates,
    identity: SigningKey,
    device_id: str,
) -> ActivationResult:
    """Activate the verified ``manifest`` from the files in ``staged`` (blocking: run it in a thread)."""

    def report(result: Outcome, reason: str, pack: InstalledPack | None) -> ActivationResult:
        rep = InstallReport(
            device_id=device_id,
            household_id=manifest.household_id,
            pack_id=manifest.pack_id,
            sequence=manifest.sequence,
            merkle_root=manifest.merkle_root,
            result=result,
            reason=reason[:500],
            at=datetime.now(UTC),
        )
        log_line = f"{manifest.pack_id} sequence {manifest.sequence}: {result}" + (
            f" ({reason})" if reason else ""
        )
        (log.info if result == "activated" else log.warning)("%s", log_line)
        return ActivationResult(rep, seal(INSTALL_REPORT_TYPE, canonical_json(rep), [identity]), pack)

    current = _installed(store, manifest.pack_id)
    try:
        _check_files(staged, manifest)
        pack_manifest = _pack_manifest(staged, manifest)
    except (UpdateError, OSError) as exc:
        return report("refused", str(exc), current)
    try:
        installed = store.install(staged, pack_manifest, keep_previous=True)
    except PackError as exc:
        return report("refused", str(exc), current)
    why: str | None = None
    if manifest.health is not None:
        try:
            output = probe(
                installed.path,
                manifest.task,
                pack_manifest.task_info,
                manifest.health.input,
                manifest.health.pair,
            )
            why = verdict(manifest.health, output)
        except (HearthError, EngineError, RuntimeError, ValueError) as exc:
            why = f"could not run: {exc}"
    if why is None:
        # The publisher's CPU is not this one: a quantized pack must also pass its own reference here.
        try:
            gated = HostGate(store).check(installed)
            why = None if gated.passed else gated.reason()
        except (HearthError, EngineError, RuntimeError, ValueError) as exc:
            why = f"quality gate could not run: {exc}"
    if why is not None:
        previous = store.restore_previous(manifest.pack_id)
        return report("rolled-back", f"health check failed: {why}", previous)
    trusted.accept_installed(manifest)
    updates.save_installed(trusted)
    updates.save_manifest(manifest, envelope)
    return report("activated", "", installed)


def _installed(store: PackStore, pack_id: str) -> InstalledPack | None:
    try:
        return store.get(pack_id)
    except PackError:
        return None
