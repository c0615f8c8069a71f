"""One way to run the agent's event loop: uvloop where it is installed, asyncio's own loop otherwise.

uvloop (libuv, in C) makes each loop iteration several times cheaper; a mesh round trip takes a dozen of
them (socket readiness, PUBACKs, task wake-ups), so it is a large share of the per-message cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # e.g. Windows, where uvloop does not build
        return asyncio.run(main)
    return uvloop.run(main)
