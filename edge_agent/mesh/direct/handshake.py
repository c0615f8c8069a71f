"""The challenge that binds a TLS link to a member's device key, both sides.

The client pins the server certificate's fingerprint from the server's *signed* presence: whoever
completes the handshake holds the key that device announced. The client then proves its own device key
inside the channel: it signs the server's fresh random challenge together with both device ids, the
fingerprint and the household id. The challenge is new per connection and reached the client inside
TLS from the pinned server, so the signature can be neither relayed to another device nor replayed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import socket
import ssl

from nacl.exceptions import BadSignatureError

from edge_agent.errors import HearthError
from edge_agent.mesh.direct.frames import Challenge, Hello, Hostile, Welcome, read_frame, write_frame
from edge_agent.mesh.direct.tls import STREAM_BUFFER
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import DirectContact
from edge_agent.mesh.settings import DirectLimits

__all__ = ["challenge_client", "connect", "sign_input"]

_CONTEXT = b"hearth direct link v1"


def sign_input(household: str, client: str, server: str, fingerprint: str, nonce: str) -> bytes:
    """What the client signs: bound to this household, both ends, this certificate, this connection."""
    return b"\n".join([_CONTEXT, *(s.encode() for s in (household, client, server, fingerprint, nonce))])


async def challenge_client(
    node: MeshNode,
    fingerprint: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limits: DirectLimits,
) -> str:
    """The server's side: the client's proof of its device key; returns the member it is. Raises
    Hostile (the caller bounds the time it may take)."""
    nonce = secrets.token_hex(32)
    await write_frame(writer, Challenge(server=node.device_id, nonce=nonce))
    hello = await read_frame(reader, Hello, limits.max_header_bytes)
    membership = node.membership
    try:
        cert = membership.member(hello.device)
        signed = sign_input(membership.household_id, hello.device, node.device_id, fingerprint, nonce)
        cert.verify_key.verify(signed, base64.b64decode(hello.signature, validate=True))
    except HearthError as exc:
        raise Hostile(str(exc)) from None
    except (BadSignatureError, ValueError):
        raise Hostile(f"{hello.device[:8]}'s hello is not signed by its device key") from None
    return hello.device


async def connect(
    node: MeshNode,
    device_id: str,
    host: str,
    contact: DirectContact,
    context: ssl.SSLContext,
    limits: DirectLimits,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The client's side, to one host of ``contact`` (an IP literal: nothing is resolved): TLS, the
    pinned fingerprint, the signed hello, the welcome. The caller bounds the time (``handshake_s``)
    and closes nothing: on failure the writer is closed here."""
    reader, writer = await asyncio.open_connection(
        host, contact.port, ssl=context, flags=socket.AI_NUMERICHOST, limit=STREAM_BUFFER
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if hashlib.sha256(der).hexdigest() != contact.tls_sha256:
            node.dropped["DirectWrongCertificate"] += 1
            raise Hostile("its TLS certificate is not the one its signed presence announces")
        challenge = await read_frame(reader, Challenge, limits.max_header_bytes)
        if challenge.server != device_id:
            raise Hostile(f"it says it is {challenge.server[:8]}")
        signed = sign_input(
            node.membership.household_id, node.device_id, device_id, contact.tls_sha256, challenge.nonce
        )
        signature = node.identity.signing_key.sign(signed).signature
        await write_frame(
            writer, Hello(device=node.device_id, signature=base64.b64encode(signature).decode())
        )
        await read_frame(reader, Welcome, limits.max_header_bytes)
    except BaseException:
        writer.close()
        raise
    return reader, writer
