"""Where Hearth CoAP endpoints may be on the LAN, found without a broker: one multicast probe, every answer.

A device on Hearth's CoAP transport serves its signed presence advert at ``/hearth/presence``, listed in
its ``/.well-known/core`` with ``rt="hearth.presence"``, and joins the All-CoAP-Nodes groups (RFC 7252
§12.8: 224.0.1.187, ff02::fd) on its LAN interfaces. `probe` asks a group once,
``GET /.well-known/core?rt=hearth.presence``, and returns where the answers came from: candidate
addresses, nothing more. Nothing here is trusted. The caller GETs the presence resource from each
candidate by unicast and checks its signature; a stranger's answer costs it one request, and
``max_responders`` bounds how many requests that can be.

Why the probe does not use aiocoap's client: in 0.4.17, ``Context.request`` to a multicast address
delivers only the first response and drops the rest as unmatched (tokenmanager.py; doc/faq.rst says
"the request interface only exposes the first response"). So the probe encodes a NON request with
aiocoap's `Message`, sends it from its own datagram socket, and reads every datagram that carries its
token until the deadline.

The responding side is plain aiocoap. This module only says what to pass it (`multicast_spec`,
`wkc_resource`, `presence_site`). Checked in network namespaces (tests/test_coap_discovery.py):

* The server must be bound to the wildcard address (``bind=("::", port)``, transport ``udp6``, which is
  dual stack). A socket bound to a unicast address never sees group traffic. Join the groups per
  interface with `multicast_spec`. aiocoap's own shortcut (a bare interface name) also joins ff02::1 and
  the site-local groups, which Hearth does not need.
* aiocoap answers a group request from its unicast address. `UDP6EndpointAddress.as_response_address`
  drops the request's destination (the group) from the reply's pktinfo, so the kernel picks the source
  address of the outgoing interface. The probe's socket receives that reply, and its source is the
  candidate. Over IPv6 the reply comes from the responder's link-local address, so the candidate carries
  its zone (``fe80::…%eth0``), which aiocoap takes in a URI host.
* ``WKCResource(..., impl_info=None)`` stays silent on a multicast query whose filter matches nothing: it
  sets No-Response for 2.xx. So only Hearth endpoints answer the rt-filtered probe. aiocoap does not
  suppress *errors* to multicast requests, so a CoAP server without ``/.well-known/core`` answers 4.04.
  The probe ignores anything but 2.05.
* aiocoap sets ``SO_REUSEPORT`` on server sockets, so a second server on the same port binds without
  complaint and the kernel splits unicast datagrams between the two (issue 24 research, p3). Run
  responders with ``AIOCOAP_REUSE_PORT=0`` to get "address in use" instead.
* Name the interface. ``ff02::fd`` is link-local, so the interface's index goes in the scope id and in
  ``IPV6_MULTICAST_IF``. Without one, the kernel picks an interface by its ``ff00::/8`` route, and every
  interface has one of those. 224.0.1.187 without an interface follows the routing table, and on a host
  without a default route the send fails with "Network is unreachable".
* Over IPv6 a host's link-local address is usable once duplicate address detection has passed it, about a
  second after the link comes up. Until then a probe from that host fails with "Cannot assign requested
  address".
* TTL and hop limit stay at the kernel's default of 1, so a probe never leaves the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Sequence

from aiocoap import GET, NON, POST, Code, Message
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.resource import Resource, Site, WKCResource
from aiocoap.util.linkformat import parse as parse_linkformat

__all__ = [
    "ALL_COAP_NODES_V4",
    "ALL_COAP_NODES_V6",
    "PRESENCE_PATH",
    "RESOURCE_TYPE",
    "WKC_PATH",
    "ProbeError",
    "multicast_spec",
    "presence_site",
    "probe",
    "wkc_resource",
]

log = logging.getLogger(__name__)

ALL_COAP_NODES_V4 = "224.0.1.187"
ALL_COAP_NODES_V6 = "ff02::fd"
PRESENCE_PATH = ("hearth", "presence")
HELLO_PATH = ("hearth", "hello")
"""Where a device says it has a new board (`resources.HELLO`)."""
"""Where a Hearth endpoint serves its signed presence advert."""
RESOURCE_TYPE = "hearth.presence"
"""The presence resource's ``rt`` in ``/.well-known/core``, and the probe's filter."""
WKC_PATH = (".well-known", "core")

_PRESENCE_HREF = "/" + "/".join(PRESENCE_PATH)
_TOKEN_BYTES = 8  # the longest token CoAP allows: a stranger guesses it with odds of 2**-64


class ProbeError(OSError):
    """The probe could not be sent at all: no socket, no such interface, or no way to the group."""


def multicast_spec(interfaces: Sequence[str]) -> list[tuple[str, str]]:
    """aiocoap's ``create_server_context(multicast=...)`` for a server bound to the wildcard address: both
    All-CoAP-Nodes groups on each interface, and only those. An empty list means no multicast."""
    return [(group, name) for name in interfaces for group in (ALL_COAP_NODES_V4, ALL_COAP_NODES_V6)]


def wkc_resource(site: Site) -> WKCResource:
    """``/.well-known/core`` for ``site``. It does not advertise aiocoap's version (``impl_info=None``),
    and it stays silent on a group query that matches nothing."""
    return WKCResource(site.get_resources_as_linkheader, impl_info=None)


def presence_site(presence: Resource) -> Site:
    """A site with ``/.well-known/core`` and ``presence`` at `PRESENCE_PATH`, tagged `RESOURCE_TYPE`: what a
    probe finds."""
    presence.rt = RESOURCE_TYPE
    site = Site()
    site.add_resource(PRESENCE_PATH, presence)
    site.add_resource(WKC_PATH, wkc_resource(site))
    return site


async def probe(
    port: int,
    *,
    timeout: float,
    interface: str | None = None,
    ipv6: bool = False,
    max_responders: int = 64,
    max_datagram: int = 1500,
    group: str | None = None,
) -> list[tuple[str, int]]:
    """Multicast one NON ``GET /.well-known/core?rt=hearth.presence`` to All-CoAP-Nodes on ``port`` and
    collect every answer until ``timeout``: an answer is a unicast datagram with this probe's token whose
    link-format lists the presence resource. Returns the distinct (host, port) of the responders, in
    order of arrival. It returns early once it has ``max_responders`` of them. A responder on this host
    answers too (multicast loops back), and the caller knows itself by the signed advert.

    A datagram that is larger than ``max_datagram``, does not parse, carries another token, is not 2.05 or
    does not list the presence resource is ignored (logged at debug). Hosts are IP literals, and an IPv6
    link-local host carries its zone (``fe80::1%eth0``). ``interface`` names the interface to send the
    probe from. ``group`` replaces the All-CoAP-Nodes address (the tests send to 127.0.0.1, because
    loopback cannot do multicast).

    Raises:
        ProbeError: (an OSError) naming what failed: the socket, the interface, or the send to the group.
            Nothing that arrives afterwards can make the probe raise.
        ValueError: for an argument out of range.
    """
    if not 0 < port < 65536 or timeout <= 0 or max_responders < 1 or max_datagram < 1:
        raise ValueError("port must be 1..65535 and timeout, max_responders, max_datagram positive")
    address = group or (ALL_COAP_NODES_V6 if ipv6 else ALL_COAP_NODES_V4)
    destination = ipaddress.ip_address(address)
    token = secrets.token_bytes(_TOKEN_BYTES)
    request = Message(code=GET, uri_path=WKC_PATH, uri_query=(f"rt={RESOURCE_TYPE}",))
    request.mtype, request.mid, request.token = NON, secrets.randbits(16), token  # ctor kwargs are deprecated

    sock, sockaddr = _socket(destination, port, interface)
    where = f"{address} port {port}" + (f" on {interface}" if interface else "")
    try:
        sock.sendto(request.encode(), sockaddr)
    except OSError as exc:
        sock.close()
        raise _failed(f"cannot send the CoAP probe to {where}", exc) from exc

    loop = asyncio.get_running_loop()
    collector = _Collector(token, max_responders, max_datagram, loop.create_future())
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: collector, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collector.full, timeout)
    finally:
        transport.close()
    found = list(collector.found)
    log.debug("probe of %s: %d responders, %d datagrams ignored", where, len(found), collector.ignored)
    return found


def group_hello(port: int, own_port: int, *, interface: str, ipv6: bool = False) -> None:
    """Say hello to All-CoAP-Nodes on ``port`` out of ``interface`` (one NON ``POST /hearth/hello``
    carrying ``own_port``, where this device's board is, since the hello leaves from another socket).
    aiocoap would send a group request only along the default route, or not at all without one.
    Raises ProbeError."""
    request = Message(code=POST, uri_path=HELLO_PATH, payload=own_port.to_bytes(2, "big"))
    request.mtype, request.mid, request.token = NON, secrets.randbits(16), b""
    request.opt.no_response = 26  # RFC 7967: no answers wanted
    destination = ipaddress.ip_address(ALL_COAP_NODES_V6 if ipv6 else ALL_COAP_NODES_V4)
    sock, sockaddr = _socket(destination, port, interface)
    try:
        sock.sendto(request.encode(), sockaddr)
    except OSError as exc:
        raise _failed(f"cannot send a hello to {destination} port {port} on {interface}", exc) from exc
    finally:
        sock.close()


def _failed(what: str, exc: OSError) -> ProbeError:
    """``what`` failed because of ``exc``, keeping its errno."""
    text = f"{what}: {exc.strerror or exc}"
    return ProbeError(exc.errno, text) if exc.errno is not None else ProbeError(text)


def _socket(
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, interface: str | None
) -> tuple[socket.socket, tuple[str, int] | tuple[str, int, int, int]]:
    """A bound, non-blocking UDP socket that sends group traffic out of ``interface``, and the sockaddr of
    ``destination``."""
    index = 0
    if interface is not None:
        try:
            index = socket.if_nametoindex(interface)
        except OSError as exc:
            raise _failed(f"no network interface named {interface!r}", exc) from exc
    v6 = destination.version == 6
    try:
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise _failed("cannot open a UDP socket for the CoAP probe", exc) from exc
    try:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # answers to an IPv6 probe only
            if index:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.bind(("::", 0))
        else:
            if index:  # struct ip_mreqn: group and local address unused, the interface by index
                mreqn = struct.pack("=4s4si", bytes(4), bytes(4), index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.bind(("0.0.0.0", 0))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _failed("cannot set up the CoAP probe's socket", exc) from exc
    if not v6:
        return sock, (str(destination), port)
    scoped = destination.is_link_local or (destination.is_multicast and (destination.packed[1] & 0x0F) <= 2)
    return sock, (str(destination), port, 0, index if scoped else 0)


class _Collector(asyncio.DatagramProtocol):
    """Keeps the source of every datagram that answers the probe, and ignores the rest."""

    def __init__(self, token: bytes, limit: int, max_datagram: int, full: asyncio.Future[None]) -> None:
        self.token, self.limit, self.max_datagram, self.full = token, limit, max_datagram, full
        self.found: dict[tuple[str, int], None] = {}  # ordered: arrival order, each responder once
        self.ignored = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        why_not = _why_not(data, self.token, self.max_datagram)
        if why_not is not None:
            self.ignored += 1
            log.debug("probe: ignored a datagram from %s: %s", addr[:2], why_not)
            return
        if self.full.done():
            return
        self.found[_candidate(addr)] = None
        if len(self.found) >= self.limit:
            self.full.set_result(None)

    def error_received(self, exc: Exception) -> None:
        log.debug("probe: %s (an ICMP error from some host; the probe goes on)", exc)


def _candidate(addr: tuple[str | int, ...]) -> tuple[str, int]:
    """(host, port) of a sender. Python leaves the zone off a link-local IPv6 host, but a unicast
    request needs it, so it is added by interface name (``fe80::1%eth0``), as aiocoap takes it."""
    host, port = str(addr[0]), int(addr[1])
    scope = int(addr[3]) if len(addr) == 4 else 0
    if scope and "%" not in host:
        try:
            host = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            host = f"{host}%{scope}"
    return host, port


def _why_not(data: bytes, token: bytes, max_datagram: int) -> str | None:
    """Why ``data`` is not an answer to the probe with ``token``; None if it is."""
    if len(data) > max_datagram:
        return f"{len(data)} bytes, more than {max_datagram}"
    try:
        message = Message.decode(data)
    except Exception as exc:  # a stranger's bytes: any failure to decode is just "not CoAP"
        return f"not CoAP ({type(exc).__name__})"
    if message.token != token:
        return "another token"
    if message.code != Code.CONTENT:
        return f"code {message.code}"
    if message.opt.content_format not in (None, ContentFormat.LINKFORMAT):
        return f"content format {message.opt.content_format}"
    try:
        links = parse_linkformat(message.payload.decode("utf-8")).links
    except Exception as exc:  # as above: the parser's failures are not ours to sort
        return f"not link-format ({type(exc).__name__})"
    for link in links:
        types = [v for k, v in link.attr_pairs if k == "rt" and v is not None]
        if link.href == _PRESENCE_HREF and any(RESOURCE_TYPE in v.split() for v in types):
            return None
    return "no presence resource listed"
