"""Content-addressed pack store under ``$HEARTH_HOME/store``.

Layout::

    store/blobs/sha256/<2 hex>/<64 hex>   read-only file contents, deduplicated across packs
    store/packs/<name>@<quant>/           pack.json + hard links to the blobs, loadable in place

A pack directory is assembled in a staging directory and renamed into place, so a crash never leaves a
half-installed pack. Every file is hashed before it enters the store and again before a model is loaded:
a file whose digest does not match is refused.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_agent.errors import PackError, PackIntegrityError, PackNotFoundError
from edge_agent.models.pack import MANIFEST_NAME, PackManifest
from edge_agent.paths import hearth_home
from edge_agent.validation import format_validation_error

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class InstalledPack:
    """A pack present in the store: its manifest and the directory it loads from."""

    manifest: PackManifest
    path: Path

    @property
    def pack_id(self) -> str:
        return self.manifest.pack_id

    def file_path(self, rel: str) -> Path:
        return self.path / rel


class PackStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or hearth_home() / "store"
        self.blobs = self.root / "blobs" / "sha256"
        self.packs = self.root / "packs"

    # -- reading ---------------------------------------------------------------------------------------

    def _read_manifest(self, pack_dir: Path) -> PackManifest:
        path = pack_dir / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise PackError(f"{pack_dir}: no {MANIFEST_NAME}") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise PackError(f"{path}: unreadable manifest: {exc}") from exc
        try:
            return PackManifest.model_validate(raw)
        except ValidationError as exc:
            raise PackError(format_validation_error(str(path), exc)) from exc

    def iter_packs(self) -> Iterator[InstalledPack | PackError]:
        """Every pack directory: the pack, or the error that makes it unusable."""
        if not self.packs.is_dir():
            return
        for pack_dir in sorted(p for p in self.packs.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                yield InstalledPack(self._read_manifest(pack_dir), pack_dir)
            except PackError as exc:
                yield exc

    def list(self) -> list[InstalledPack]:
        """Valid installed packs (malformed ones are reported by ``verify``)."""
        return [p for p in self.iter_packs() if isinstance(p, InstalledPack)]

    def get(self, pack_id: str) -> InstalledPack:
        pack_dir = self.packs / pack_id
        if "/" in pack_id or pack_id.startswith(".") or not pack_dir.is_dir():
            known = ", ".join(p.pack_id for p in self.list()) or "none; run `hearth models build`"
            raise PackNotFoundError(f"no pack '{pack_id}' in {self.packs} (installed: {known})")
        return InstalledPack(self._read_manifest(pack_dir), pack_dir)

    def verify(self, pack: InstalledPack) -> None:
        """Check every file's size and SHA-256; raise naming the first bad file."""
        for f in pack.manifest.files:
            path = pack.file_path(f.path)
            if not path.is_file():
                raise PackIntegrityError(f"{pack.pack_id}: file {f.path} is missing from {pack.path}")
            size = path.stat().st_size
            if size != f.size:
                raise PackIntegrityError(
                    f"{pack.pack_id}: {f.path} is {size} bytes, manifest says {f.size}; refusing to load it"
                )
            digest = sha256_file(path)
            if digest != f.sha256:
                raise PackIntegrityError(
                    f"{pack.pack_id}: {f.path} has sha256 {digest[:16]}…, manifest says {f.sha256[:16]}…; "
                    "refusing to load it (re-run `hearth models build` or fetch the pack again)"
                )

    # -- writing ---------------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def _put_blob(self, src: Path, digest: str) -> Path:
        dst = self._blob_path(digest)
        if dst.exists():
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dst

    @property
    def previous(self) -> Path:
        return self.root / "previous"

    def install(self, src_dir: Path, manifest: PackManifest, *, keep_previous: bool = False) -> InstalledPack:
        """Copy a built pack into the store, verifying every file against ``manifest`` first. With
        ``keep_previous`` the pack it replaces is kept aside (one generation) for `restore_previous`."""
        for f in manifest.files:
            src = src_dir / f.path
            if not src.is_file():
                raise PackIntegrityError(f"{manifest.pack_id}: {src} is missing")
            if src.stat().st_size != f.size or sha256_file(src) != f.sha256:
                raise PackIntegrityError(f"{manifest.pack_id}: {src} does not match its manifest entry")
        self.packs.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.packs, prefix=".staging-"))
        try:
            for f in manifest.files:
                blob = self._put_blob(src_dir / f.path, f.sha256)
                target = staging / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(blob, target)
                except OSError:  # other filesystem or no hard links: fall back to a copy
                    shutil.copyfile(blob, target)
            (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
            final = self.packs / manifest.pack_id
            if final.exists() and keep_previous:
                self.previous.mkdir(exist_ok=True)
                kept = self.previous / manifest.pack_id
                if kept.exists():
                    shutil.rmtree(kept)
                os.replace(final, kept)
                os.replace(staging, final)
            elif final.exists():
                trash = self.packs / f".old-{manifest.pack_id}-{os.getpid()}"
                os.replace(final, trash)
                os.replace(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return InstalledPack(manifest, final)

    def restore_previous(self, pack_id: str) -> InstalledPack | None:
        """Put back the pack ``install(keep_previous=True)`` replaced; None if there was none (the
        failed pack is then removed, since nothing older existed)."""
        kept = self.previous / pack_id
        final = self.packs / pack_id
        trash = self.packs / f".failed-{pack_id}-{os.getpid()}"
        if final.exists():
            os.replace(final, trash)
        try:
            if not kept.is_dir():
                return None
            os.replace(kept, final)
            return InstalledPack(self._read_manifest(final), final)
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    def _kept(self) -> builtins.list[InstalledPack]:
        kept: builtins.list[InstalledPack] = []
        for d in sorted(self.previous.glob("*")):
            try:
                kept.append(InstalledPack(self._read_manifest(d), d))
            except PackError:
                continue
        return kept

    def remove(self, pack_id: str) -> None:
        pack = self.get(pack_id)
        shutil.rmtree(pack.path)
        self.gc()

    def gc(self) -> int:
        """Delete blobs no pack links to; returns bytes freed."""
        if not self.blobs.is_dir():
            return 0
        referenced = {f.sha256 for p in [*self.list(), *self._kept()] for f in p.manifest.files}
        freed = 0
        for blob in self.blobs.glob("*/*"):
            if blob.name not in referenced and not blob.name.startswith("."):
                freed += blob.stat().st_size
                blob.unlink()
        return freed
