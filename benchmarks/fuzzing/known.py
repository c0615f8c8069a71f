"""Failures the fuzz targets find in parts another owner is fixing: where the bug is, and how to tell it.

The CI form reports a failure matching one of these as an expected failure (anything else fails the
test); a strict regression test in tests/test_fuzz.py turns red the day the fix lands, so the entry is
removed then. The long form labels them in its results (they still count as failures).
"""

from __future__ import annotations

import re

__all__ = ["KNOWN", "known"]

KNOWN: dict[str, list[tuple[str, str]]] = {}
"""Target -> (pattern in the failure, why it is known and where the bug is)."""


def known(target: str, failure: str) -> str | None:
    """Why ``failure`` (its text, causes included) is a known one for ``target``, or None."""
    return next((why for pattern, why in KNOWN.get(target, []) if re.search(pattern, failure)), None)
