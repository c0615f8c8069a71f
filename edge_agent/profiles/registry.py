"""Loading the shipped firmware profiles."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from edge_agent.errors import ProfileError
from edge_agent.paths import profiles_dir
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.validation import format_validation_error


def load_profile_file(path: Path, *, require_id_match: bool = True) -> FirmwareProfile:
    """Parse and validate one profile YAML, naming the file and field on error."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping")
    try:
        profile = FirmwareProfile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(str(path), exc)) from exc
    if require_id_match and profile.id != path.stem:
        raise ProfileError(f"{path}: id '{profile.id}' must match the file name '{path.stem}'")
    return profile


def list_profiles(directory: Path | None = None) -> list[FirmwareProfile]:
    """All profiles in the profiles directory, sorted by RAM (weakest first)."""
    directory = directory or profiles_dir()
    profiles = [load_profile_file(p) for p in sorted(directory.glob("*.yaml"))]
    return sorted(profiles, key=lambda p: (p.ram_mb, p.id))


def load_profile(profile_id: str, directory: Path | None = None) -> FirmwareProfile:
    """Load a profile by id, or by path to a YAML file."""
    as_path = Path(profile_id)
    if as_path.suffix in {".yaml", ".yml"} and as_path.exists():
        return load_profile_file(as_path, require_id_match=False)
    directory = directory or profiles_dir()
    path = directory / f"{profile_id}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(directory.glob("*.yaml"))) or "none"
        raise ProfileError(f"unknown firmware profile '{profile_id}' (known: {known})")
    return load_profile_file(path)
