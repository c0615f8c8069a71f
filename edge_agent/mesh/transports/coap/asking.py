"""Asking a CoAP peer and waiting for its answer, bounded in time, without tripping aiocoap.

aiocoap 0.4.17 sets the outcome of a request's ``response`` future when the answer (or an error, such as
an ICMP "port unreachable" a second later) arrives, without checking whether the future is already
done; a caller that gave up by cancelling it (``asyncio.timeout`` around the ``await`` does) makes that
set raise InvalidStateError inside aiocoap's receive path. So the future is awaited through a shield
and never cancelled; whatever it ends with later is taken and dropped here. The request itself runs on
to its last retransmission (bounded by `Tuning`), as CoAP has no way to call a confirmable one back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiocoap
from aiocoap import Message

__all__ = ["ask"]


def _settle(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # taken, so asyncio does not log it as never retrieved


async def ask(
    context: aiocoap.Context, message: Message, *, timeout: float, blockwise: bool = False
) -> Message:
    """``message``'s response; raises TimeoutError after ``timeout`` s, or aiocoap's error."""
    future: asyncio.Future[Message] = context.request(message, handle_blockwise=blockwise).response
    future.add_done_callback(_settle)
    async with asyncio.timeout(timeout):
        return await asyncio.shield(future)
