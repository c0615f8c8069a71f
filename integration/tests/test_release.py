"""The HACS path: the release zip holds exactly the component (no caches), reproducibly, with matching
versions. (Unpacked into a real Home Assistant's config directory, as HACS does, it is what the
end-to-end test installs and runs: integration/e2e.)"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_release.py"
spec = importlib.util.spec_from_file_location("build_release", SCRIPT)
assert spec is not None and spec.loader is not None
build_release = importlib.util.module_from_spec(spec)
sys.modules["build_release"] = build_release
spec.loader.exec_module(build_release)


def test_the_zip_is_the_component_and_is_reproducible(tmp_path: Path) -> None:
    first = build_release.build(tmp_path / "a")
    second = build_release.build(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    names = set(zipfile.ZipFile(first).namelist())
    expected = {p.relative_to(build_release.COMPONENT).as_posix() for p in build_release.release_files()}
    assert names == expected
    assert {"manifest.json", "__init__.py", "translations/en.json", "icons.json", "brand/icon.png"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_versions_must_agree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "integration/custom_components/hearth").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "hearth-edge"\nversion = "0.2.0"\n')
    (repo / "hacs.json").write_text('{"zip_release": true, "filename": "hearth.zip"}')
    (repo / "integration/custom_components/hearth/manifest.json").write_text(
        '{"version": "0.1.0", "requirements": ["hearth-edge==0.1.0"]}'
    )
    with pytest.raises(
        SystemExit, match=r"manifest.json version 0.1.0 != pyproject version 0.2.0.*do not pin"
    ):
        build_release.check_versions(repo)
