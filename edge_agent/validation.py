"""Turning pydantic errors into one-line, user-facing messages; checks shared by several models."""

from __future__ import annotations

from pydantic import ValidationError


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('llm', 'max_tokens')`` -> ``llm.max_tokens``; list indices as ``[i]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    """``source: field.path: reason`` for each problem, one per line."""
    lines = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {field_path(err['loc'])}: {msg}")
    return "\n".join(lines)


def is_plain_relative_path(path: str) -> bool:
    """A POSIX path that stays inside its directory: relative, no ``.``/``..``/empty parts, no
    backslash or NUL. Pack manifests, update manifests and ONNX external-data locations all use it
    (external-data traversal: CVE-2024-27318)."""
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and "\x00" not in path
        and not any(p in {"", ".", ".."} for p in path.split("/"))
    )
