"""Direct links between two household devices for bulk data (model update chunks): a pack crosses the
network once, between the two devices, instead of twice through the broker's host.

TLS 1.3, bound to household identity without an X.509 CA (that exists only beside a production
Mosquitto), the way WebRTC binds DTLS to its signed signalling:

- Each agent makes a fresh P-256 key and self-signed certificate at start and announces the
  certificate's SHA-256 with its addresses and port in its *signed* presence. The client pins that
  fingerprint: whoever completes the handshake holds the key that device announced.
- The client then proves its device key inside the channel: it signs the server's fresh random
  challenge together with both device ids, the fingerprint and the household id. The challenge is new
  per connection and reached the client inside TLS from the pinned server, so the signature can be
  neither relayed to another device nor replayed.
- Every ask re-checks that both ends are still members; a revocation closes that device's links.
- Bounded before anything costly (issue 21, N5): the server accepts plain TCP sockets itself and counts
  a connection before its TLS handshake starts, at most MAX_PENDING unauthenticated in all and
  MAX_PENDING_PER_SOURCE from one address (IPv6: one /64); past that a connection is closed at once, so
  a flood of half-open handshakes costs one file descriptor per slot, never more. Nothing reads an
  accepted socket before TLS owns it: a client's ClientHello often arrives before the server gets to
  it (always, on a loaded device), and bytes a plain-text stream had taken would never reach TLS (the
  handshake then waits for what it already had). TLS, challenge and hello must all be done within
  HANDSHAKE_S. Authenticated links are bounded in total and per device; header size, answer
  length (the caller's signed chunk length, read before any byte of data) and idle time too.
- Contacts are taken at their word only as far as they are safe to try (N4): a host must be an IP
  literal (nothing is ever resolved), on this device's own network (`local_network`), on a port of at
  least 1024; a holder whose links fail or time out is left to the broker path for a while, doubling
  each time (up to an hour), so a member cannot make fetchers probe addresses of its choosing.
- The server listens while direct links are on (the agent's life): a device that holds nothing answers
  "not held", and the bounds above make listening cost at most MAX_PENDING + MAX_SERVED_LINKS sockets.
- Supervised: one connection or one ask that fails unexpectedly is dropped and counted (the
  supervisor's "direct-links"); the server and every other link go on.

After the handshake each ask and answer is one frame: a 4-byte big-endian header length, the header
(JSON), then, for an answer, its raw bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import ipaddress
import logging
import secrets
import socket
import ssl
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nacl.exceptions import BadSignatureError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import DirectLinkError, DirectRefusedError, HearthError
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import DirectContact
from edge_agent.supervision import Supervisor
from edge_agent.sync.limits import MAX_CHUNK

__all__ = [
    "MAX_ANSWER_BYTES",
    "Ask",
    "DirectLinks",
    "DirectState",
    "Network",
    "Serve",
    "local_address_towards",
    "local_network",
    "usable_hosts",
]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 4096
MAX_ANSWER_BYTES = MAX_CHUNK
"""The largest chunk a manifest may sign (sync.limits)."""
HANDSHAKE_S = 3.0
"""TCP connect (client), TLS handshake, challenge and hello: all of it, on either side."""
IDLE_S = 120.0
MAX_SERVED_LINKS = 16
"""Authenticated links this device serves at once."""
MAX_LINKS_PER_DEVICE = 2
MAX_PENDING = 32
"""Connections not authenticated yet (TLS handshake, challenge, hello), from anyone together."""
MAX_PENDING_PER_SOURCE = 4
"""... and from one source address (IPv6: one /64), so one LAN host cannot take every slot."""
MIN_PORT = 1024
"""Contacts on privileged ports (ssh, http, a router's admin page) are never tried."""
UNREACHABLE_S = 60.0
"""After a failed connection, the broker path is used for this long before trying directly again;
doubled for each failure in a row, up to MAX_UNREACHABLE_S."""
MAX_UNREACHABLE_S = 3600.0
ACCEPT_RETRY_S = 1.0
"""After accept() fails for lack of descriptors or buffers, wait this long (as asyncio's servers do)."""
LOOP = "direct-links"
"""The supervisor's name for the server: its accept loop's restarts, connections and asks dropped."""
_CONTEXT = b"hearth direct link v1"
_HEX32 = r"^[0-9a-f]{32}$"

F = TypeVar("F", bound="_Frame")


class DirectState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Challenge(_Frame):
    type: Literal["challenge"] = "challenge"
    server: str = Field(pattern=_HEX32)
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")


class Hello(_Frame):
    type: Literal["hello"] = "hello"
    device: str = Field(pattern=_HEX32)
    signature: str = Field(max_length=100)


class Welcome(_Frame):
    type: Literal["welcome"] = "welcome"


class Ask(_Frame):
    """One chunk of one update, by its manifest's content id."""

    type: Literal["ask"] = "ask"
    id: int = Field(ge=0, le=2**62)
    content_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    index: int = Field(ge=0, le=1 << 20)


class Answer(_Frame):
    type: Literal["answer"] = "answer"
    id: int = Field(ge=0, le=2**62)
    length: int = Field(ge=0, le=MAX_ANSWER_BYTES)
    error: str | None = Field(default=None, max_length=200)


Serve = Callable[[str, Ask], Awaitable[bytes]]
"""Answers an ask from a member (by device id); raises DirectLinkError to say no (not held, ...)."""
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Hostile(HearthError):
    """A peer broke the link's framing or handshake (dropped and counted, never trusted)."""


def _sign_input(household: str, client: str, server: str, fingerprint: str, nonce: str) -> bytes:
    return b"\n".join([_CONTEXT, *(s.encode() for s in (household, client, server, fingerprint, nonce))])


async def _write(writer: asyncio.StreamWriter, frame: _Frame, data: bytes = b"") -> None:
    header = frame.model_dump_json().encode()
    writer.write(struct.pack(">I", len(header)) + header)
    if data:
        writer.write(data)
    await writer.drain()


async def _read(reader: asyncio.StreamReader, model: type[F]) -> F:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length > MAX_HEADER_BYTES:
        raise _Hostile(f"a {length}-byte frame header (at most {MAX_HEADER_BYTES})")
    try:
        return model.model_validate_json(await reader.readexactly(length))
    except ValidationError as exc:
        raise _Hostile(f"not a {model.__name__} frame: {exc.errors()[0]['msg']}") from None


def _self_signed(device_id: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and self-signed certificate (PEM): identity comes from the signed presence."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory(prefix="hearth-tls-") as tmp:  # ssl loads keys from files only
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the fingerprint from the signed presence is checked instead
    return ctx


def local_address_towards(host: str, port: int) -> str:
    """The local address this host uses to reach ``host`` (the broker): a peer that reaches the broker
    can reach us there too. No packet is sent (a UDP socket's connect only picks the route)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return str(probe.getsockname()[0])


def _interface_prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    """The prefix length of the interface that holds ``ip`` (None when no interface says)."""
    try:
        import psutil
    except ImportError:  # a client-only install: the default prefix
        return None
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6) or not addr.netmask:
                continue
            try:
                if ipaddress.ip_address(addr.address.split("%", 1)[0]) == ip:
                    return ipaddress.ip_network(f"{ip}/{addr.netmask}", strict=False).prefixlen
            except ValueError:
                continue
    return None


def local_network(address: str) -> Network:
    """The network whose hosts this device may connect to directly: that of the interface holding
    ``address`` (the one it reaches the broker from), never wider than a /16 (IPv4) or /48 (IPv6),
    and a /24 or /64 when no interface says; the loopback network when ``address`` is loopback (the
    broker runs on this host). Raises ValueError if ``address`` is not an IP address."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return ipaddress.ip_network("127.0.0.0/8" if ip.version == 4 else "::1/128")
    widest, default = (16, 24) if ip.version == 4 else (48, 64)
    prefix = _interface_prefix(ip)
    prefix = max(widest, prefix if prefix is not None else default)
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


def usable_hosts(contact: DirectContact, network: Network | None) -> list[str]:
    """The hosts of ``contact`` worth connecting to: IP literals (a name is never resolved) inside
    ``network``, not its network or broadcast address, on a port of at least MIN_PORT; none when
    ``network`` is None (this device does not know its own)."""
    if network is None or contact.port < MIN_PORT:
        return []
    usable: list[str] = []
    for host in contact.hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        special = ip.is_multicast or ip.is_unspecified or (ip.is_link_local and not network.is_link_local)
        edges = ip == network.network_address or (ip.version == 4 and ip == network.broadcast_address)
        if ip in network and not special and not (edges and network.num_addresses > 2):
            usable.append(str(ip))
    return usable


def _source_of(peername: object) -> str:
    """Who a connection comes from, for the per-source bound: its address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(peername[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


async def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host`` (resolved as `asyncio.start_server` would)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    listener = socket.create_server(address, family=family, backlog=100)
    listener.setblocking(False)
    return listener


async def _start_tls(
    conn: socket.socket, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The server side of TLS on an accepted socket nothing has read from, as streams (what
    `asyncio.open_connection` does for a client). The socket belongs to the transport from here on,
    closed with it, also when this fails or is cancelled."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, conn, ssl=context, ssl_handshake_timeout=2 * HANDSHAKE_S
    )  # this module's HANDSHAKE_S bound, not asyncio's, is what ends a slow handshake
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _Link:
    """Our end of one link to a peer: asks in flight, answered in any order by id."""

    def __init__(
        self,
        peer: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        dropped: Counter[str],
        supervisor: Supervisor,
    ) -> None:
        self.peer = peer
        self.dropped = dropped
        self.supervisor = supervisor
        self.reader, self.writer = reader, writer
        self.pending: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        self.closed = False
        self.task = asyncio.create_task(self._read_answers(), name=f"direct-{peer[:8]}")

    async def _read_answers(self) -> None:
        why: BaseException = DirectLinkError(f"link to {self.peer[:8]} closed")
        try:
            while True:
                answer = await _read(self.reader, Answer)
                expected = self.pending.pop(answer.id, None)
                if expected is not None and answer.length > expected[0]:
                    self.pending[answer.id] = expected  # failed with the rest below
                    raise _Hostile(f"a {answer.length}-byte answer; the signed chunk is {expected[0]} bytes")
                data = await self.reader.readexactly(answer.length) if answer.length else b""
                if expected is None or expected[1].done():
                    continue  # asked, then given up on: the bytes are read and dropped
                if answer.error is not None:
                    expected[1].set_exception(DirectRefusedError(f"{self.peer[:8]} said: {answer.error}"))
                else:
                    expected[1].set_result(data)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
            why = DirectLinkError(f"link to {self.peer[:8]} broke: {exc or type(exc).__name__}")
        except _Hostile as exc:
            self.dropped["DirectLinkRefused"] += 1
            why = DirectLinkError(f"{self.peer[:8]} broke the link's rules: {exc}")
        except Exception as exc:  # a bug a peer's answer triggered: this link ends, counted, nothing else
            self.supervisor.drop(LOOP, type(exc).__name__, exc, f"link to {self.peer[:8]} failed")
            why = DirectLinkError(f"link to {self.peer[:8]} failed: {type(exc).__name__}")
        finally:
            self.close(why)

    def close(self, why: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(why or DirectLinkError(f"link to {self.peer[:8]} closed"))
        self.pending.clear()
        self.writer.close()
        if self.task is not asyncio.current_task():
            self.task.cancel()

    async def ask(self, ask: Ask, max_length: int, timeout: float) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[ask.id] = (max_length, future)
        try:
            await _write(self.writer, ask)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:  # a link that went silent (a firewall, a dead route) is no link
            why = DirectLinkError(f"{self.peer[:8]} did not answer within {timeout:g} s")
            self.close(why)
            raise why from None
        except (ConnectionError, OSError) as exc:
            self.close(exc)
            raise DirectLinkError(f"link to {self.peer[:8]} broke: {exc}") from None
        finally:
            self.pending.pop(ask.id, None)


class DirectLinks:
    """This device's direct links: a TLS server for members' asks, and links to peers it asks."""

    def __init__(
        self,
        node: MeshNode,
        serve: Serve | None,
        *,
        host: str | None,
        port: int = 0,
        network: Network | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``host`` None (or ``serve`` None): ask only, listen nowhere (a one-shot command's links).
        ``network``: where peers' contacts may point (default: `local_network` of ``host``; with
        neither, no peer is ever reached directly)."""
        self.node = node
        self.serve = serve
        self.host, self.port = host, port
        if network is None and host is not None:
            with contextlib.suppress(ValueError):  # a name, or no address: no direct asks
                network = local_network(host)
        self.network = network
        self.supervisor = supervisor or Supervisor()
        self.state = DirectState.UNOPENED
        self.contact: DirectContact | None = None
        """What our presence announces once open."""
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._served: dict[asyncio.Task[None], tuple[str, asyncio.StreamWriter | socket.socket | None]] = {}
        """Connections being served -> the member on the other end ("" until it authenticated) and what
        ends it: the accepted socket until TLS takes it, None during the TLS handshake (cancelling the
        task ends it), then the stream writer."""
        self._pending: Counter[str] = Counter()
        """Unauthenticated connections being handshaken, by source (see `_source_of`)."""
        self._ssl: ssl.SSLContext | None = None
        self._links: dict[str, _Link] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._unreachable: dict[str, float] = {}
        self._failures: Counter[str] = Counter()
        """Failed or timed-out links in a row, by holder: each doubles its time on the broker path."""
        self.received: Counter[str] = Counter()
        """Bytes received directly, by peer (what did not cross the broker)."""
        self._client_ssl = _client_context()
        node.membership.on_revoked.append(self._revoked)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not DirectState.UNOPENED:
            raise RuntimeError(f"these direct links are {self.state.value}; make new ones")
        if self.host is None or self.serve is None:
            self.state = DirectState.OPEN
            return self
        cert_pem, key_pem = _self_signed(self.node.device_id)
        fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).hexdigest()
        self._ssl = _server_context(cert_pem, key_pem)
        # Plain TCP first: a connection is counted (and refused past the bounds) before any TLS work.
        self._listener = await _listen(self.host, self.port)
        port = self._listener.getsockname()[1]
        self.contact = DirectContact(hosts=[self.host], port=port, tls_sha256=fingerprint)
        self.state = DirectState.OPEN
        self._acceptor = asyncio.create_task(
            self.supervisor.supervise(LOOP, self._accept_loop, stopping=self._closing),
            name="direct-links-accept",
        )
        log.info("direct links on %s:%d", self.host, port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _closing(self) -> bool:
        return self.state is DirectState.CLOSED

    async def close(self) -> None:
        if self.state is DirectState.CLOSED:
            return
        self.state = DirectState.CLOSED
        with contextlib.suppress(ValueError):
            self.node.membership.on_revoked.remove(self._revoked)
        for link in list(self._links.values()):
            link.close()
        tasks = [link.task for link in self._links.values()]
        self._links.clear()
        if self._acceptor is not None:
            tasks.append(self._acceptor)
        for task in tasks:
            task.cancel()
        for task, (_, end) in self._served.items():
            if end is not None:
                end.close()
            task.cancel()
        tasks += list(self._served)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()

    def _revoked(self, devices: frozenset[str]) -> None:
        for device in devices:
            if (link := self._links.pop(device, None)) is not None:
                link.close(DirectLinkError(f"{device[:8]} has been revoked"))
        for device, end in list(self._served.values()):
            if device in devices and end is not None:
                end.close()

    # -- serving --------------------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        """Accept connections while open (supervised). An accepted socket is only counted here, never
        read: its first bytes are the client's ClientHello, for TLS (`_start_tls`)."""
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while not self._closing():
            try:
                conn, peer = await loop.sock_accept(self._listener)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # the client left before we got to it
            except OSError as exc:  # out of descriptors or buffers: the backlog waits meanwhile
                log.warning("direct links: cannot accept a connection (%s); retrying in %g s", exc,
                            ACCEPT_RETRY_S)  # fmt: skip
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: object) -> None:
        """Count a new connection before its TLS handshake, or refuse it past the bounds."""
        source = _source_of(peer)
        if sum(self._pending.values()) >= MAX_PENDING or self._pending[source] >= MAX_PENDING_PER_SOURCE:
            self.node.dropped["DirectLinkFlood"] += 1
            conn.close()  # no handshake, no waiting: the descriptor is free at once
            return
        self._pending[source] += 1
        task = asyncio.create_task(self._accept(conn, source), name=f"direct-from-{source}")
        self._served[task] = ("", conn)

    async def _accept(self, conn: socket.socket, source: str) -> None:
        """One counted connection: whatever goes wrong in it stays in it (expected failures are
        handled below; anything else is dropped and counted)."""
        task = asyncio.current_task()
        assert task is not None
        held = True

        def release() -> None:
            """Free this connection's unauthenticated slot (once: after the hello, or at the end)."""
            nonlocal held
            if held:
                held = False
                self._pending[source] -= 1
                if self._pending[source] <= 0:
                    del self._pending[source]

        try:
            with self.supervisor.guard(LOOP, f"dropped a direct link from {source}"):
                await self._serve_connection(task, source, conn, release)
        finally:
            release()
            _, end = self._served.pop(task, ("", None))
            if end is not None:
                end.close()

    async def _serve_connection(
        self,
        task: asyncio.Task[None],
        source: str,
        conn: socket.socket,
        authenticated: Callable[[], None],
    ) -> None:
        assert self._ssl is not None
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_S):  # TLS, challenge and hello: all of it
                    self._served[task] = ("", None)  # the socket is TLS's now (closed with it)
                    reader, writer = await _start_tls(conn, self._ssl)
                    self._served[task] = ("", writer)
                    device = await self._handshake(reader, writer)
            except TimeoutError:
                raise _Hostile(f"no TLS handshake and hello within {HANDSHAKE_S:g} s") from None
            authenticated()
            served = [d for d, _ in self._served.values() if d]
            if len(served) >= MAX_SERVED_LINKS or served.count(device) >= MAX_LINKS_PER_DEVICE:
                self.node.dropped["DirectLinkFlood"] += 1
                return
            self._served[task] = (device, writer)
            await _write(writer, Welcome())
            await self._answer(device, reader, writer)
        except _Hostile as exc:
            self.node.dropped["DirectLinkRefused"] += 1
            log.info("refused a direct link from %s: %s", source, exc)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError, TimeoutError):
            pass  # the other end left, or sat idle

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """The client's proof of its device key (the caller bounds the time it may take)."""
        assert self.contact is not None
        nonce = secrets.token_hex(32)
        await _write(writer, Challenge(server=self.node.device_id, nonce=nonce))
        hello = await _read(reader, Hello)
        membership = self.node.membership
        try:
            cert = membership.member(hello.device)
            signed = _sign_input(
                membership.household_id, hello.device, self.node.device_id, self.contact.tls_sha256, nonce
            )
            cert.verify_key.verify(signed, base64.b64decode(hello.signature, validate=True))
        except HearthError as exc:
            raise _Hostile(str(exc)) from None
        except (BadSignatureError, ValueError):
            raise _Hostile(f"{hello.device[:8]}'s hello is not signed by its device key") from None
        return hello.device

    async def _answer(self, device: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(IDLE_S):
                ask = await _read(reader, Ask)
            try:
                self.node.membership.member(device)
            except HearthError as exc:
                raise _Hostile(str(exc)) from None
            assert self.serve is not None
            try:
                data = await self.serve(device, ask)
                answer = Answer(id=ask.id, length=len(data))
            except DirectLinkError as exc:
                await _write(writer, Answer(id=ask.id, length=0, error=str(exc)[:200]))
                continue
            except Exception as exc:  # a bug this ask triggered: it is refused, the link goes on
                self.supervisor.drop(LOOP, type(exc).__name__, exc, f"an ask from {device[:8]} failed")
                await _write(writer, Answer(id=ask.id, length=0, error="internal error"))
                continue
            await _write(writer, answer, data)

    # -- asking ---------------------------------------------------------------------------------------

    def reachable(self, device_id: str, contact: DirectContact | None) -> bool:
        """Worth trying directly: it announces a contact with a host we may try (`usable_hosts`), and
        has not failed us lately."""
        if contact is None or self.state is not DirectState.OPEN:
            return False
        if not usable_hosts(contact, self.network):
            return False
        return time.monotonic() >= self._unreachable.get(device_id, 0.0)

    async def ask(
        self, device_id: str, contact: DirectContact, ask: Ask, *, max_length: int, timeout: float = 10.0
    ) -> bytes:
        """``ask``'s answer from ``device_id`` (at most ``max_length`` bytes), over a link made on first
        use. Raises DirectRefusedError if the peer said no, DirectLinkError if the link could not be
        made or broke (then use the broker)."""
        try:
            self.node.membership.member(device_id)  # every outgoing path checks the peer still belongs
        except HearthError as exc:
            raise DirectLinkError(str(exc)) from None
        link = await self._link(device_id, contact)
        try:
            data = await link.ask(ask, max_length, timeout)
        except DirectRefusedError:
            raise
        except DirectLinkError:
            self._give_up_on(device_id)
            raise
        self._failures.pop(device_id, None)
        self.received[device_id] += len(data)
        return data

    def _give_up_on(self, device_id: str) -> None:
        """Use the broker for this peer for a while (its link failed or went silent): UNREACHABLE_S,
        doubled for every failure in a row (a holder whose contact leads nowhere is tried ever less)."""
        if len(self._unreachable) > 1024:
            self._unreachable.clear()
            self._failures.clear()
        self._failures[device_id] += 1
        wait = min(MAX_UNREACHABLE_S, UNREACHABLE_S * 2 ** min(self._failures[device_id] - 1, 16))
        self._unreachable[device_id] = time.monotonic() + wait

    async def _link(self, device_id: str, contact: DirectContact) -> _Link:
        link = self._links.get(device_id)
        if link is not None and not link.closed:
            return link
        lock = self._connecting.setdefault(device_id, asyncio.Lock())
        async with lock:
            link = self._links.get(device_id)
            if link is not None and not link.closed:
                return link
            if time.monotonic() < self._unreachable.get(device_id, 0.0):  # failed while we waited
                raise DirectLinkError(f"no direct link to {device_id[:8]} (failed moments ago)")
            try:
                link = await self._connect(device_id, contact)
            except DirectLinkError:
                self._give_up_on(device_id)
                raise
            self._links[device_id] = link
            return link

    async def _connect(self, device_id: str, contact: DirectContact) -> _Link:
        problems: list[str] = []
        hosts = usable_hosts(contact, self.network)
        if not hosts:
            self.node.dropped["DirectContactRefused"] += 1
            raise DirectLinkError(
                f"no direct link to {device_id[:8]}: its contact names no IP address on {self.network} "
                f"with a port of at least {MIN_PORT}"
            )
        for host in hosts:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(HANDSHAKE_S):
                    reader, writer = await asyncio.open_connection(
                        host, contact.port, ssl=self._client_ssl, flags=socket.AI_NUMERICHOST
                    )
                    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                    if hashlib.sha256(der).hexdigest() != contact.tls_sha256:
                        self.node.dropped["DirectWrongCertificate"] += 1
                        raise _Hostile("its TLS certificate is not the one its signed presence announces")
                    challenge = await _read(reader, Challenge)
                    if challenge.server != device_id:
                        raise _Hostile(f"it says it is {challenge.server[:8]}")
                    signed = _sign_input(
                        self.node.membership.household_id, self.node.device_id, device_id,
                        contact.tls_sha256, challenge.nonce,
                    )  # fmt: skip
                    signature = self.node.identity.signing_key.sign(signed).signature
                    await _write(
                        writer,
                        Hello(device=self.node.device_id, signature=base64.b64encode(signature).decode()),
                    )
                    await _read(reader, Welcome)
                return _Link(device_id, reader, writer, self.node.dropped, self.supervisor)
            except asyncio.IncompleteReadError:
                problems.append(f"{host}: closed during the handshake (are we still a member?)")
            except TimeoutError:
                self.node.dropped["DirectConnectTimeout"] += 1
                problems.append(f"{host}: no link within {HANDSHAKE_S:g} s")
            except (OSError, ssl.SSLError, _Hostile) as exc:
                problems.append(f"{host}: {exc or type(exc).__name__}")
            if writer is not None:
                writer.close()
        raise DirectLinkError(f"no direct link to {device_id[:8]}: {'; '.join(problems)}")
