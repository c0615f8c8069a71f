"""The answering side of the CoAP mesh benchmark (``benchmarks.mesh_coap``), in its own process.

    python -m benchmarks.mesh_coap_echo plain
    python -m benchmarks.mesh_coap_echo oscore          < one JSON line: the OSCORE keys and the peer
    python -m benchmarks.mesh_coap_echo lane --peer-port PORT   < the same line
    python -m benchmarks.mesh_coap_echo hearth --home HOME --peer ID --peer-port PORT [--envelope]

Prints ``ready PORT`` once it answers on 127.0.0.1:PORT (UDP), then echoes every request until it is
terminated (the benchmark stops it by PID).

- plain: an aiocoap server whose one resource, ``POST /echo``, answers the bytes it got (block-wise
  both ways, as aiocoap does it by default);
- oscore: the same resource behind aiocoap's OSCORE site wrapper, with the in-memory context
  (`MemoryContext`) of the responder's end of one real Hearth session handshake;
- lane: Hearth's own OSCORE, its message lane (`coap.lane`) with the same keys, answering the bytes it
  got (in the answer, or POSTed back to the requester's lane when one datagram does not carry them);
- hearth: a Hearth device on its CoAP transport (`CoapLinks` + `CoapTransport`): a message on the
  requests channel (OSCORE, keyed by the session handshake the requester starts) is sent back on the
  responses channel with ``send_message``, each reply its own task, as the direct-link echo does;
  ``--envelope``: the design not shipped, the message being a v2-sealed frame inside OSCORE (opened
  here with the session, the reply sealed again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

ECHO_PATH = ("echo",)
HEARTH_REDISCOVER_S = 3600.0
"""Discovery rounds are spaced out of the benchmark's way (the first, to the seed, runs at start)."""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def coap_echo(oscore_keys: dict[str, Any] | None) -> None:
    import aiocoap
    from aiocoap import CHANGED, Message, resource
    from aiocoap.credentials import CredentialsMap
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

    from benchmarks.rigs.aiocoap_oscore import MemoryContext
    from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial

    class Echo(resource.Resource):  # type: ignore[misc]
        async def render_post(self, request: Message) -> Message:
            return Message(code=CHANGED, payload=request.payload)

    site = resource.Site()
    site.add_resource(ECHO_PATH, Echo())
    server: Any = site
    if oscore_keys is not None:
        material = OscoreMaterial(*(bytes.fromhex(oscore_keys[k]) for k in ("secret", "salt", "sid", "rid")))
        credentials = CredentialsMap()
        credentials[":bench"] = MemoryContext(material, oscore_keys["peer"])
        server = OscoreSiteWrapper(site, credentials)
    port = _free_udp_port()
    context = await aiocoap.Context.create_server_context(
        server, bind=("127.0.0.1", port), transports=["udp6"]
    )
    print(f"ready {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await context.shutdown()


async def lane_echo(oscore_keys: dict[str, Any], peer_port: int) -> None:
    """Hearth's OSCORE on its message lane, answering the bytes it got: in the answer when one datagram
    carries them, else POSTed back to the requester's lane (the lane answers with no Block2)."""
    from aiocoap import resource

    from edge_agent.mesh.sessions.oscore_keys import OscoreMaterial
    from edge_agent.mesh.transports.coap.lane import MessageLane
    from edge_agent.mesh.transports.coap.protection import OscoreContext
    from edge_agent.mesh.transports.coap.quirks import server_context, udp_interface

    material = OscoreMaterial(*(bytes.fromhex(oscore_keys[k]) for k in ("secret", "salt", "sid", "rid")))
    context = OscoreContext(material, oscore_keys["peer"])
    requester = ("::ffff:127.0.0.1", peer_port, 0, 0)
    later: set[asyncio.Task[bytes]] = set()

    def echo(ctx: OscoreContext, path: tuple[bytes, ...], body: bytes) -> bytes:
        if len(body) <= budget:
            return body
        task = asyncio.create_task(lane.post(requester, ctx, path, body, budget=budget, timeout=30.0))
        later.add(task)
        task.add_done_callback(later.discard)
        return b""

    lane = MessageLane(keys=lambda kid: context, handle=echo, max_body=1 << 20)
    budget = lane.budget("127.0.0.1")
    port = _free_udp_port()
    server = await server_context(resource.Site(), ("127.0.0.1", port), [])
    lane.attach(udp_interface(server))
    print(f"ready {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        lane.detach()
        await server.shutdown()


async def hearth_echo(home: Path, peer: str, peer_port: int, envelope: bool) -> None:
    from benchmarks.mesh_echo import ECHO_SESSION, REQUESTER_SESSION
    from edge_agent.mesh.assembly import build_node
    from edge_agent.mesh.interfaces import Channel
    from edge_agent.mesh.protocol import CoapContact
    from edge_agent.mesh.settings import CoapSettings
    from edge_agent.mesh.state import HouseholdState
    from edge_agent.mesh.transports.coap.links import CoapLinks

    node = build_node(HouseholdState(home))
    node.session = ECHO_SESSION
    sessions = node.sessions
    assert sessions is not None
    # No seed: this side starts before the requester binds its port, and a datagram to a port nobody
    # holds draws an ICMP "port unreachable", after which aiocoap's socket hears nothing more on uvloop
    # (libuv reports the error as POLLERR and stops polling the socket for good).
    settings = CoapSettings(
        bind="127.0.0.1", port=0, min_fetch_interval_s=0.0, rediscover_s=HEARTH_REDISCOVER_S
    )
    links = CoapLinks(node, settings)
    transport = links.connect(None)
    node.transport = transport
    # What the requester's verified presence would teach: where it answers CoAP, that it speaks v2.
    links.book.learn(peer, CoapContact(hosts=["127.0.0.1"], port=peer_port))
    sessions.speaks(peer)
    own_requests = str(node.address(node.device_id, Channel.REQUESTS))
    their_responses = str(node.address(peer, Channel.RESPONSES))
    replies: set[asyncio.Task[None]] = set()

    async def reply(device_id: str, payload: bytes) -> None:
        if envelope:
            assert sessions is not None
            payload = await sessions.seal(
                node.recipient(device_id), REQUESTER_SESSION, their_responses, payload
            )
        await links.send_message(device_id, None, Channel.RESPONSES, payload, session=REQUESTER_SESSION)

    class Echo:
        def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
            if envelope:
                assert sessions is not None
                payload = sessions.open(payload, own_requests).payload
            task = asyncio.create_task(reply(device_id, payload))
            replies.add(task)
            task.add_done_callback(replies.discard)

        def link_down(self, device_id: str) -> None:
            pass

    async with transport:
        links.carry(Echo())

        async def frames() -> None:  # session handshakes arrive as sealed frames in the inbox
            async for _ in node.receive(transport):
                pass

        reader = asyncio.create_task(frames())
        print(f"ready {links.port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            reader.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("stack", choices=["plain", "oscore", "lane", "hearth"])
    parser.add_argument("--home", type=Path, help="hearth: the answering device's household state")
    parser.add_argument("--peer", help="hearth: the requester's device id")
    parser.add_argument(
        "--peer-port", type=int, help="hearth, lane: the UDP port the requester answers CoAP on"
    )
    parser.add_argument("--envelope", action="store_true", help="hearth: a v2-sealed frame inside OSCORE")
    args = parser.parse_args()
    os.environ["AIOCOAP_REUSE_PORT"] = "0"  # a port taken twice fails, rather than sharing datagrams
    from aiocoap.util import socknumbers

    socknumbers.HAS_RECVERR = False  # as `CoapTransport` sets it: every stack reads its sockets alike
    from edge_agent import aio

    if args.stack == "hearth":
        if args.home is None or args.peer is None or args.peer_port is None:
            parser.error("hearth needs --home, --peer and --peer-port")
        aio.run(hearth_echo(args.home, args.peer, args.peer_port, args.envelope))
    elif args.stack == "lane":
        if args.peer_port is None:
            parser.error("lane needs --peer-port")
        aio.run(lane_echo(json.loads(sys.stdin.readline()), args.peer_port))
    elif args.stack == "oscore":
        aio.run(coap_echo(json.loads(sys.stdin.readline())))
    else:
        aio.run(coap_echo(None))


if __name__ == "__main__":
    main()
