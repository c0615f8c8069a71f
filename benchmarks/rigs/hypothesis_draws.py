"""Hypothesis draws that depend on the seed and the strategies only — for the fuzz campaigns (always) and
for the whole suite under the ``ci`` profile (``tests/conftest.py``), so a red CI replays with the one test
alone. Light: Hypothesis only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hypothesis.internal.conjecture import providers
from hypothesis.internal.constants_ast import Constants

__all__ = ["mined_constants", "seeded_draws"]

_MINE = providers._get_local_constants  # taken before any pin: `seeded_draws` holds it aside


def mined_constants() -> Constants:
    """What Hypothesis would mine from the modules loaded now, pinned or not (for the test that the
    pin holds something back)."""
    return _MINE()


@contextlib.contextmanager
def seeded_draws() -> Iterator[None]:
    """Draws that depend on the seed and the strategies only, not on which modules happen to be loaded.

    Hypothesis mixes constants mined from every *local* module in ``sys.modules`` into its draws (about one
    draw in twenty), and mines again whenever ``sys.modules`` grows. So one seed drew different inputs in
    the full suite (every test module imported) than in ``pytest tests/test_fuzz.py``, and a campaign's
    "--seed 3 --inputs N" did not replay what the campaign saw. The local pool is held empty while fuzzing
    (Hypothesis's built-in constants stay): ``hypothesis`` is pinned in the lock file, and
    tests/test_fuzz.py checks that a new module's constants no longer change a seeded campaign."""
    mine = providers._get_local_constants
    providers._get_local_constants = Constants
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = mine
        providers.CONSTANTS_CACHE.cache.clear()
