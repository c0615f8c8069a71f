"""aiocoap 0.4.17 as found: the server context Hearth needs, and what had to be worked around.

- its pipes log a late exception with ``log.error(..., exception=...)``, which `logging` refuses with a
  TypeError (raised in a task nobody awaits): `_PipeLog` drops the keyword;
- it sets ``SO_REUSEPORT``: two agents on one port would split the datagrams between them, where a
  clear "address in use" is wanted;
- with its ICMP error queue on (``IP_RECVERR``), the first "port unreachable" stops the socket's reader
  for good under uvloop (libuv reports the pending error as a failed poll): the queue is off, on every
  loop alike, and a silent peer is found by timeouts, as a lost one is anyway (aiocoap's warning that
  it runs without the queue is filtered out);
- it takes any error of a send as news about the remote and fails every exchange with that peer: a
  datagram the kernel refused to send (a local firewall, a full queue) is a lost datagram, which
  retransmission deals with;
- it says nothing of the port a server bound to port 0 got: `free_port` picks one first;
- its UDP interface is where the message lane (`lane`) sits: `udp_interface` finds it;
- its shutdown leaves the timers that send an empty ACK for a request still being answered: one firing
  after the socket closed raises inside the loop's callback; `shutdown` cancels them first.

`asking.ask` is the other workaround (never cancel aiocoap's response future).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap import interfaces
from aiocoap.util import socknumbers

__all__ = ["Tuning", "free_port", "server_context", "shutdown", "udp_interface"]

log = logging.getLogger(__name__)

_NOT_SENT = frozenset({errno.EPERM, errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM})
"""Errors of a send that only say this one datagram did not leave (a local firewall dropped it, a queue
was full), nothing about the peer."""


class Tuning(aiocoap.numbers.TransportTuning):  # type: ignore[misc]
    """Retransmission for a home LAN: the first retry after ~0.5 s, not RFC 7252's 2-3 s (the mesh's
    stall timeout is a few seconds: a lost datagram must be resent well within it)."""

    ACK_TIMEOUT = 0.5
    MAX_RETRANSMIT = 4


class _PipeLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.pop("exception", None)
        return msg, kwargs

    def getChild(self, suffix: str) -> _PipeLog:
        return _PipeLog(self.logger.getChild(suffix), {})


def _no_recverr_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Transport udp6 set up on platform without RECVERR")


def free_port(bind: str) -> int:
    """A UDP port free on ``bind`` now."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((bind, 0))
        return int(probe.getsockname()[1])


async def server_context(
    site: interfaces.Resource, bind: tuple[str, int], multicast: list[Any]
) -> aiocoap.Context:
    """A server context on ``bind`` (UDP; OSCORE is the lane's), its quirks mended; raises OSError."""
    os.environ["AIOCOAP_REUSE_PORT"] = "0"
    socknumbers.HAS_RECVERR = False
    server_log = logging.getLogger("coap-server")
    if _no_recverr_warning not in server_log.filters:
        server_log.addFilter(_no_recverr_warning)
    context = await aiocoap.Context.create_server_context(
        site, bind=bind, transports=["udp6"], multicast=multicast
    )
    for holder in (context, *context.request_interfaces):
        if isinstance(getattr(holder, "log", None), logging.Logger):
            holder.log = _PipeLog(holder.log, {})
    _sends_may_fail(context)
    return context


async def shutdown(context: aiocoap.Context) -> None:
    """``context.shutdown()``, its pending empty-ACK timers cancelled first (see the module docstring)."""
    for holder in context.request_interfaces:
        waiting: Any = getattr(getattr(holder, "token_interface", None), "_piggyback_opportunities", {})
        for _, timer in list(waiting.values()):
            timer.cancel()
        waiting.clear()
    await context.shutdown()


def udp_interface(context: aiocoap.Context) -> Any:
    """The UDP endpoint (``MessageInterfaceUDP6``) under ``context``'s token and message managers."""
    for holder in context.request_interfaces:
        interface = getattr(getattr(holder, "token_interface", None), "message_interface", None)
        if interface is not None and hasattr(interface, "datagram_msg_received"):
            return interface
    raise RuntimeError("aiocoap's context has no UDP interface")


def _sends_may_fail(context: aiocoap.Context) -> None:
    for holder in context.request_interfaces:
        messages: Any = getattr(getattr(holder, "token_interface", None), "message_interface", None)
        received = getattr(messages, "error_received", None)
        if messages is None or received is None:
            continue

        def error_received(exc: Exception, received: Callable[[Exception], None] = received) -> None:
            if isinstance(exc, OSError) and exc.errno in _NOT_SENT:
                log.debug("a CoAP datagram was not sent (%s); it counts as lost", exc)
                return
            received(exc)

        messages.error_received = error_received
