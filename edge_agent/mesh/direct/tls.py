"""TLS for direct links without an X.509 CA: a fresh self-signed certificate per start (identity comes
from the signed presence that announces its fingerprint), TLS 1.3 contexts, and the server's plain
listening socket with the server side of TLS started on an accepted socket nothing has read."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import tempfile
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.mesh import broker_x509

__all__ = ["client_context", "fingerprint", "listen", "self_signed", "server_context", "start_tls"]


def self_signed(device_id: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and self-signed certificate (PEM): identity comes from the signed presence."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    cert = broker_x509.self_signed(key, name, timedelta(days=3650))  # dates unchecked: pinned by fingerprint
    return broker_x509.pem(cert).encode(), broker_x509.key_pem(key).encode()


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 of a certificate's DER form, as announced in presence."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).hexdigest()


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory(prefix="hearth-tls-") as tmp:  # ssl loads keys from files only
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the fingerprint from the signed presence is checked instead
    return ctx


async def listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host`` (resolved as `asyncio.start_server` would)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    listener = socket.create_server(address, family=family, backlog=100)
    listener.setblocking(False)
    return listener


STREAM_BUFFER = 256 << 10
"""A link's read buffer before it stops reading the socket (pausing at twice this): asyncio's 64 KiB
paused and resumed the socket for every 64 KiB message; a frame is at most ``max_frame_bytes`` anyway."""


async def start_tls(
    conn: socket.socket, context: ssl.SSLContext, handshake_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The server side of TLS on an accepted socket nothing has read from, as streams (what
    `asyncio.open_connection` does for a client). Nothing may read it first: a client's ClientHello
    often arrives before the server gets to the socket (always, on a loaded device), and bytes a
    plain-text stream had taken would never reach TLS (commit 93c4da3, the uvloop lost ClientHello).
    The socket belongs to the transport from here on, closed with it, also when this fails or is
    cancelled."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_BUFFER)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, conn, ssl=context, ssl_handshake_timeout=2 * handshake_s
    )  # the caller's handshake_s bound, not asyncio's, is what ends a slow handshake
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
