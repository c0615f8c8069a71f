"""Turning pydantic errors into one-line, user-facing messages."""

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
