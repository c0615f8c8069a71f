"""OSCORE keyed by Hearth's own session handshake (the CoAP transport's security core): both ends of one
EDHOC run derive matching contexts (RFC 9528 A.1), a member's protected request reaches a resource on a
real aiocoap server on loopback, and what must be refused is: unprotected requests off the public
routes, a revoked member, a replayed or tampered message. The transport itself builds on this."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import GET, POST, Message, oscore, resource
from aiocoap.credentials import CredentialsMap

from edge_agent.mesh.household import Membership
from edge_agent.mesh.sessions.credentials import RunCredential, verify_statement
from edge_agent.mesh.sessions.handshake import Initiator, Responder
from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.sessions.pending import context_of
from edge_agent.mesh.transports.coap.oscore import MemoryContext
from edge_agent.mesh.transports.coap.site import MemberSite, member_of
from tests.support.meshsim import Device, SimHousehold, household

FRIDGE_INDEX, HUB_INDEX = 0x01020304, 0x0A0B0C0D


def _handshake(home: SimHousehold, fridge: Device, hub: Device) -> tuple[OscoreMaterial, OscoreMaterial]:
    """One session handshake, the fridge initiating, as the session layer runs it; both ends' OSCORE keys."""
    household = home.root.household_id
    fridge_run, hub_run = "f" * 16, "h" * 16
    initiator = Initiator(
        RunCredential.make(fridge.identity, household, fridge_run, aes=True), hub.id, FRIDGE_INDEX
    )
    responder = Responder(
        RunCredential.make(hub.identity, household, hub_run, aes=True), fridge.id, HUB_INDEX
    )
    message_2 = responder.message_2(initiator.message_1())
    message_3, initiator_keys = initiator.message_3(
        message_2,
        lambda ccs, statement: verify_statement(hub.certificate, household, hub_run, ccs, statement),
        context_of(household, fridge.id, hub.id, fridge_run, hub_run),
    )
    responder_keys = responder.finish(
        message_3,
        lambda ccs, statement: verify_statement(fridge.certificate, household, fridge_run, ccs, statement),
        context_of(household, fridge.id, hub.id, fridge_run, hub_run),
    )
    return initiator_keys.oscore, responder_keys.oscore


def _received(message: Message) -> Message:
    """``message`` as the other end decodes it off the wire."""
    message.mid, message.mtype = 1, aiocoap.CON
    return Message.decode(message.encode())


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Whoami(resource.Resource):  # type: ignore[misc]
    def __init__(self, membership: Membership) -> None:
        super().__init__()
        self.membership = membership

    async def render_post(self, request: Message) -> Message:
        member = member_of(request, self.membership)
        return Message(code=aiocoap.CHANGED, payload=member.name.encode())


@contextlib.asynccontextmanager
async def _hub_server(membership: Membership, contexts: CredentialsMap) -> AsyncIterator[str]:
    site = resource.Site()
    site.add_resource(["whoami"], Whoami(membership))
    site.add_resource(
        [".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader, impl_info=None)
    )
    public = {(GET, (".well-known", "core"))}
    port = _free_udp_port()
    server = await aiocoap.Context.create_server_context(
        MemberSite(site, contexts, public), bind=("127.0.0.1", port), transports=["udp6"]
    )
    try:
        yield f"coap://127.0.0.1:{port}"
    finally:
        await server.shutdown()


async def test_both_ends_of_a_session_handshake_derive_matching_oscore_keys(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        fridge, hub = home.device("fridge"), home.device("hub", serves=["generate"])
        mine, theirs = _handshake(home, fridge, hub)
        assert (mine.master_secret, mine.master_salt) == (theirs.master_secret, theirs.master_salt)
        assert (
            mine.sender_id == theirs.recipient_id == HUB_INDEX.to_bytes(4, "big")
        )  # the initiator sends with C_R
        assert mine.recipient_id == theirs.sender_id == FRIDGE_INDEX.to_bytes(4, "big")
        assert mine.master_secret.hex() not in repr(mine)
        again, _ = _handshake(home, fridge, hub)
        assert again.master_secret != mine.master_secret  # fresh ephemeral keys: fresh OSCORE keys


async def test_a_members_protected_request_is_served_and_what_must_be_refused_is(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        fridge, hub = home.device("fridge"), home.device("hub", serves=["generate"])
        fridge_keys, hub_keys = _handshake(home, fridge, hub)
        hub_membership = home.keys_of(hub).membership
        contexts = CredentialsMap()
        contexts[":session"] = MemoryContext(hub_keys, peer=fridge.id)
        async with _hub_server(hub_membership, contexts) as base:
            client = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
            plain = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                client.client_credentials[f"{base}/*"] = MemoryContext(fridge_keys, peer=hub.id)
                answer = await client.request(Message(code=POST, uri=f"{base}/whoami")).response
                assert (answer.code, answer.payload) == (aiocoap.CHANGED, b"fridge")
                # Unprotected: refused off the public routes, discovery answered.
                refused = await plain.request(Message(code=POST, uri=f"{base}/whoami")).response
                assert (refused.code, refused.payload) == (aiocoap.UNAUTHORIZED, b"OSCORE required")
                listing = await plain.request(Message(code=GET, uri=f"{base}/.well-known/core")).response
                assert listing.code == aiocoap.CONTENT and b"</whoami>" in listing.payload
                # Revoked: the keys still open the request, the resource refuses the device.
                hub_membership.apply_revocations(home.root.revoke(fridge.id))
                forbidden = await client.request(Message(code=POST, uri=f"{base}/whoami")).response
                assert forbidden.code == aiocoap.FORBIDDEN and b"revoked" in forbidden.payload
            finally:
                await client.shutdown()
                await plain.shutdown()


async def test_a_replayed_or_tampered_message_does_not_open(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        fridge, hub = home.device("fridge"), home.device("hub", serves=["generate"])
        fridge_keys, hub_keys = _handshake(home, fridge, hub)
        sender, receiver = MemoryContext(fridge_keys, peer=hub.id), MemoryContext(hub_keys, peer=fridge.id)
        request = Message(code=POST, uri="coap://127.0.0.1/whoami", payload=b"who")
        protected = _received(sender.protect(request)[0])
        opened, _ = receiver.unprotect(protected)
        assert opened.payload == b"who"
        window = receiver.recipient_replay_window
        before = (window._index, window._bitfield)
        with pytest.raises(oscore.ReplayError):
            receiver.unprotect(protected)
        tampered = _received(sender.protect(request)[0])
        tampered.payload = tampered.payload[:-1] + bytes([tampered.payload[-1] ^ 1])
        with pytest.raises(oscore.ProtectionInvalid):
            receiver.unprotect(tampered)
        assert (window._index, window._bitfield) == before  # neither moved the window


def test_a_context_refuses_ids_it_cannot_use() -> None:
    material = OscoreMaterial(b"s" * 16, b"salt", b"\x01", b"\x01")
    with pytest.raises(ValueError, match="must differ"):
        MemoryContext(material, peer="a" * 32)
    with pytest.raises(ValueError, match="at most 7 bytes"):
        MemoryContext(OscoreMaterial(b"s" * 16, b"salt", b"\x01" * 8, b"\x02"), peer="a" * 32)
