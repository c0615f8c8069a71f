"""OSCORE keyed by Hearth's own session handshake (the CoAP transport's security core).

Both ends of one EDHOC run derive matching contexts (RFC 9528 A.1); the message lane's own OSCORE
(`protection`) produces RFC 8613's test vectors and interoperates with aiocoap's implementation in both
directions (aiocoap as client of a real lane on a real socket, and the lane as client of aiocoap's
OSCORE site); what must be refused is (replays, forgeries, unknown key ids, unprotected requests off
the public routes, a revoked member), with the replay window unmoved."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import GET, POST, Message, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from benchmarks.rigs.aiocoap_oscore import MemoryContext
from edge_agent.errors import NotAMemberError
from edge_agent.mesh.household import Membership
from edge_agent.mesh.sessions.credentials import RunCredential, verify_statement
from edge_agent.mesh.sessions.handshake import Initiator, Responder
from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
from edge_agent.mesh.sessions.pending import context_of
from edge_agent.mesh.transports.coap import wire
from edge_agent.mesh.transports.coap.lane import LaneRefused, MessageLane, Refused
from edge_agent.mesh.transports.coap.protection import OscoreContext, ProtectionError, parse_option
from edge_agent.mesh.transports.coap.quirks import server_context, udp_interface
from edge_agent.mesh.transports.coap.site import PublicSite
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


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_lane_s_oscore_produces_rfc_8613_s_test_vectors() -> None:
    """RFC 8613 C.1.1 (key derivation with a master salt) and C.4 (the protected request): GET /tv1 to
    localhost, sequence number 20, the client's sender id empty."""
    secret, salt = bytes(range(1, 17)), bytes.fromhex("9e7ca92223786340")
    client = OscoreContext(OscoreMaterial(secret, salt, b"", b"\x01"), peer="server")
    client.sequence = 20
    plaintext = bytes([0x01]) + wire.encode_options([(wire.URI_PATH, b"tv1")])
    option, ciphertext, _ = client.protect_request(plaintext)
    datagram = wire.Datagram(
        wire.CON,
        0x02,
        0x5D1F,
        bytes.fromhex("00003974"),
        [(3, b"localhost"), (wire.OSCORE, option)],
        ciphertext,
    )
    assert wire.encode(datagram) == bytes.fromhex(
        "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e"
    )
    server = OscoreContext(OscoreMaterial(secret, salt, b"\x01", b""), peer="client")
    received = wire.decode(wire.encode(datagram))
    piv, kid = parse_option(wire.first(received.options, wire.OSCORE) or b"")
    assert (piv, kid) == (b"\x14", b"")
    assert server.unprotect_request(piv, received.payload)[0] == plaintext


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


@contextlib.asynccontextmanager
async def _lane_server(
    contexts: dict[bytes, OscoreContext], membership: Membership
) -> AsyncIterator[tuple[str, list[str]]]:
    """A real CoAP endpoint on loopback with a message lane in front of it: POST /whoami answers the
    member's name; yields its base URI and the reasons it refused messages."""
    refusals: list[str] = []

    def keys(kid: bytes) -> OscoreContext:
        if kid not in contexts:
            raise ProtectionError(wire.Code.UNAUTHORIZED, "Security context not found")
        return contexts[kid]

    def whoami(context: OscoreContext, path: tuple[bytes, ...], body: bytes) -> bytes:
        if path != (b"whoami",):
            raise Refused(wire.Code.NOT_FOUND, "no such inbox")
        try:
            return membership.member(context.peer).name.encode() + body
        except NotAMemberError as exc:
            raise Refused(wire.Code.FORBIDDEN, str(exc)) from None

    site = resource.Site()
    site.add_resource(
        [".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader, impl_info=None)
    )
    port = _free_udp_port()
    server = await server_context(PublicSite(site, {(GET, (".well-known", "core"))}), ("127.0.0.1", port), [])
    lane = MessageLane(
        keys=keys, handle=whoami, max_body=4096, refused=lambda r: refusals.append(r.diagnostic)
    )
    lane.attach(udp_interface(server))
    try:
        yield f"coap://127.0.0.1:{port}", refusals
    finally:
        lane.detach()
        await server.shutdown()


async def test_aiocoap_s_oscore_client_is_served_by_the_lane_and_refused_what_it_must_be(
    tmp_path: Path,
) -> None:
    async with household(tmp_path) as home:
        fridge, hub = home.device("fridge"), home.device("hub", serves=["generate"])
        fridge_keys, hub_keys = _handshake(home, fridge, hub)
        hub_membership = home.keys_of(hub).membership
        contexts = {hub_keys.recipient_id: OscoreContext(hub_keys, peer=fridge.id)}
        async with _lane_server(contexts, hub_membership) as (base, refusals):
            client = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
            plain = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                client.client_credentials[f"{base}/*"] = MemoryContext(fridge_keys, peer=hub.id)
                answer = await client.request(Message(code=POST, uri=f"{base}/whoami", payload=b"!")).response
                assert (answer.code, answer.payload) == (aiocoap.CHANGED, b"fridge!")
                # Block-wise (aiocoap's lockstep Block1, inside OSCORE): assembled by the lane.
                long = bytes(range(256)) * 10
                answer = await client.request(Message(code=POST, uri=f"{base}/whoami", payload=long)).response
                assert (answer.code, answer.payload) == (aiocoap.CHANGED, b"fridge" + long)
                missing = await client.request(Message(code=POST, uri=f"{base}/nothing")).response
                assert missing.code == aiocoap.NOT_FOUND
                # Unprotected: refused off the public routes (by aiocoap's site), discovery answered.
                refused = await plain.request(Message(code=POST, uri=f"{base}/whoami")).response
                assert (refused.code, refused.payload) == (aiocoap.UNAUTHORIZED, b"OSCORE required")
                listing = await plain.request(Message(code=GET, uri=f"{base}/.well-known/core")).response
                assert listing.code == aiocoap.CONTENT
                # Revoked: the keys still open the request, the handler refuses the device.
                hub_membership.apply_revocations(home.root.revoke(fridge.id))
                forbidden = await client.request(Message(code=POST, uri=f"{base}/whoami")).response
                assert forbidden.code == aiocoap.FORBIDDEN and b"revoked" in forbidden.payload
                assert any("revoked" in reason for reason in refusals)
            finally:
                await client.shutdown()
                await plain.shutdown()


class _Whoami(resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: Message) -> Message:
        claims = request.remote.authenticated_claims
        digest = hashlib.sha256(request.payload).hexdigest()[:16]  # short: the lane takes no Block2
        return Message(code=aiocoap.CHANGED, payload=f"{claims[0]} {digest}".encode())


async def test_the_lane_is_a_client_aiocoap_s_oscore_site_serves(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        fridge, hub = home.device("fridge"), home.device("hub", serves=["generate"])
        fridge_keys, hub_keys = _handshake(home, fridge, hub)
        site = resource.Site()
        site.add_resource(["whoami"], _Whoami())
        credentials = CredentialsMap()
        credentials[":session"] = MemoryContext(hub_keys, peer=fridge.id)
        port = _free_udp_port()
        server = await aiocoap.Context.create_server_context(
            OscoreSiteWrapper(site, credentials), bind=("127.0.0.1", port), transports=["udp6"]
        )
        mine = await server_context(resource.Site(), ("127.0.0.1", _free_udp_port()), [])
        lane = MessageLane(keys=lambda kid: contexts[kid], handle=lambda c, p, b: b"", max_body=4096)
        contexts: dict[bytes, OscoreContext] = {}
        lane.attach(udp_interface(mine))
        try:
            context = OscoreContext(fridge_keys, peer=hub.id)
            address = ("::ffff:127.0.0.1", port, 0, 0)
            answer = await lane.post(address, context, (b"whoami",), b"?", budget=1000, timeout=5.0)
            assert answer == f"member:{fridge.id} {hashlib.sha256(b'?').hexdigest()[:16]}".encode()
            long = bytes(range(256)) * 12  # 3 blocks of 1024, lockstep-compatible for aiocoap's server
            answer = await lane.post(address, context, (b"whoami",), long, budget=1100, timeout=5.0)
            assert answer == f"member:{fridge.id} {hashlib.sha256(long).hexdigest()[:16]}".encode()
            with pytest.raises(LaneRefused) as refused:
                await lane.post(address, context, (b"nothing",), b"", budget=1000, timeout=5.0)
            assert (refused.value.code, refused.value.protected) == (wire.Code.NOT_FOUND, True)
        finally:
            lane.detach()
            await mine.shutdown()
            await server.shutdown()


async def test_a_replayed_tampered_or_unknown_message_does_not_open(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        fridge, hub = home.device("fridge"), home.device("hub", serves=["generate"])
        fridge_keys, hub_keys = _handshake(home, fridge, hub)
        sender, receiver = OscoreContext(fridge_keys, peer=hub.id), OscoreContext(hub_keys, peer=fridge.id)
        option, ciphertext, _ = sender.protect_request(b"\x02\xffwho")
        piv, kid = parse_option(option)
        assert kid == HUB_INDEX.to_bytes(4, "big") == receiver.recipient_id
        assert receiver.unprotect_request(piv, ciphertext)[0] == b"\x02\xffwho"
        window = (receiver._top, receiver._seen)
        with pytest.raises(ProtectionError) as replay:
            receiver.unprotect_request(piv, ciphertext)
        assert (replay.value.code, replay.value.diagnostic) == (wire.Code.UNAUTHORIZED, "Replay detected")
        option, ciphertext, _ = sender.protect_request(b"\x02\xffwho")
        piv, _ = parse_option(option)
        with pytest.raises(ProtectionError) as tampered:
            receiver.unprotect_request(piv, ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
        assert (tampered.value.code, tampered.value.diagnostic) == (
            wire.Code.BAD_REQUEST,
            "Decryption failed",
        )
        assert (receiver._top, receiver._seen) == window  # neither moved the window
        assert receiver.unprotect_request(piv, ciphertext)[0] == b"\x02\xffwho"  # the real one still opens
        with pytest.raises(ProtectionError) as bad:
            parse_option(b"\x1b" + b"\0" * 8)  # an ID context: not this profile
        assert bad.value.code == wire.Code.BAD_OPTION


def test_a_context_refuses_ids_it_cannot_use() -> None:
    material = OscoreMaterial(b"s" * 16, b"salt", b"\x01", b"\x01")
    with pytest.raises(ValueError, match="must differ"):
        OscoreContext(material, peer="a" * 32)
    with pytest.raises(ValueError, match="at most 7 bytes"):
        OscoreContext(OscoreMaterial(b"s" * 16, b"salt", b"\x01" * 8, b"\x02"), peer="a" * 32)
