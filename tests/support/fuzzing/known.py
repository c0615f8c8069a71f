"""Failures the fuzz targets find in parts another owner is fixing: where the bug is, and how to tell it.

The CI form reports a failure matching one of these as an expected failure (anything else fails the
test); a strict regression test in tests/test_fuzz.py turns red the day the fix lands, so the entry is
removed then. The long form labels them in its results (they still count as failures).
"""

from __future__ import annotations

import re

__all__ = ["KNOWN", "known"]

NAIVE_DATES = (
    "edge_agent/sync/manifest.py:119 and keys.py:61 compare issued_at with expires_at, and trust.py:111/119 "
    "compare them with an aware now: a manifest or key set whose signed dates mix naive and aware datetimes "
    "raises TypeError out of TrustedUpdates.verify_manifest / update_key_set (pydantic passes a validator's "
    "TypeError through; trust._parse catches ValidationError only). Reached only past the signature check: "
    "signed by a listed update key (a member holding one, or a publisher's bug) or, for key sets, the root. "
    "The update exchange's guard drops that holding as unexpected instead of refusing it as malformed."
)

KNOWN: dict[str, list[tuple[str, str]]] = {
    "manifests": [(r"can't compare offset-naive and offset-aware datetimes", NAIVE_DATES)],
    "holdings": [(r"can't compare offset-naive and offset-aware datetimes", NAIVE_DATES)],
}
"""Target -> (pattern in the failure, why it is known and where the bug is)."""


def known(target: str, failure: str) -> str | None:
    """Why ``failure`` (its text, causes included) is a known one for ``target``, or None."""
    return next((why for pattern, why in KNOWN.get(target, []) if re.search(pattern, failure)), None)
