"""Build the Home Assistant release zip that HACS installs (`hacs.json`: zip_release, filename).

HACS expects `custom_components/<domain>/` at a repository's root; Hearth keeps the component under
`integration/`. With `zip_release`, HACS instead downloads the release asset named in `hacs.json` and
unpacks it into `<config>/custom_components/hearth/`: this script makes that asset, reproducibly (sorted
entries, fixed timestamps, no caches), after checking that the manifest's version and its pinned
`hearth-edge` requirement match the package being released.

    python integration/scripts/build_release.py [--out dist]
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "integration" / "custom_components" / "hearth"
EPOCH = (2020, 1, 1, 0, 0, 0)
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache"}


def release_files(component: Path = COMPONENT) -> list[Path]:
    """The component's files as they ship: sources, manifest, translations, icons, brand images."""
    return sorted(
        p for p in component.rglob("*")
        if p.is_file() and not SKIP_PARTS & set(p.relative_to(component).parts) and p.suffix != ".pyc"
    )  # fmt: skip


def check_versions(repo: Path = REPO) -> str:
    """The release version, after checking manifest.json, its requirement pin and pyproject agree."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    manifest = json.loads((repo / "integration/custom_components/hearth/manifest.json").read_text())
    version = str(project["version"])
    problems = []
    if manifest["version"] != version:
        problems.append(f"manifest.json version {manifest['version']} != pyproject version {version}")
    pin = f"{project['name']}=={version}"
    if pin not in manifest["requirements"]:
        problems.append(f"manifest.json requirements {manifest['requirements']} do not pin {pin}")
    hacs = json.loads((repo / "hacs.json").read_text())
    if not hacs.get("zip_release") or not hacs.get("filename", "").endswith(".zip"):
        problems.append("hacs.json must set zip_release and a .zip filename")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    return version


def build(out: Path, repo: Path = REPO) -> Path:
    check_versions(repo)
    filename = json.loads((repo / "hacs.json").read_text())["filename"]
    out.mkdir(parents=True, exist_ok=True)
    target = out / filename
    component = repo / "integration/custom_components/hearth"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in release_files(component):
            info = zipfile.ZipInfo(path.relative_to(component).as_posix(), date_time=EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "dist", help="Directory for the zip (default: dist)."
    )
    args = parser.parse_args(argv)
    target = build(args.out)
    print(f"{target} ({target.stat().st_size // 1024} KiB): unpack into <config>/custom_components/hearth/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
