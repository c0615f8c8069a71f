"""The answering side of the mesh benchmark, in its own process (as the serving device would be).

    python -m benchmarks.mesh_echo raw PORT [--qos 1]
    python -m benchmarks.mesh_echo hearth PORT --home HOME [--qos 1] [--v1]
    python -m benchmarks.mesh_echo direct 0 --home HOME
    python -m benchmarks.mesh_echo tls 0

Prints ``ready`` (and, for the two stacks that listen, ``PORT SHA256``) once it can answer, then
echoes every request to its sender until it is terminated (the benchmark stops it by PID).

- raw: paho with its network thread, republishing the bytes as they are (through Mosquitto);
- hearth: a MeshNode on aiomqtt that opens each frame and seals the payload back to its sender, on a
  forward-secret session (envelope v2; ``--v1``: the v1 envelope, sessions off); each reply its own
  task, as the endpoint serves requests concurrently;
- direct: the device's direct links (TLS 1.3, the household handshake), messages echoed on the link
  they came on;
- tls: the physical anchor: a plain asyncio TLS 1.3 server echoing length-prefixed frames, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.mesh.node import MeshNode

RAW_REQ, RAW_RESP = "raw/req", "raw/resp"
ECHO_SESSION, REQUESTER_SESSION = "e" * 16, "f" * 16
"""Fixed sessions for the two benchmark nodes (a real agent draws a random one per start)."""
LENGTH = struct.Struct(">I")


def raw_echo(port: int, qos: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-echo")

    def on_message(c: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        c.publish(RAW_RESP, message.payload, qos=qos)

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the Hearth transport
    client.subscribe(RAW_REQ, qos=qos)
    print("ready", flush=True)
    client.loop_forever()


def node_at(home: Path, port: int, client_id: str, qos: int, session: str, *, v1: bool = False) -> MeshNode:
    """The MeshNode of the device whose household state is in ``home``, connected to a loopback broker
    (``v1``: with forward-secret sessions off, as a device from before them)."""
    from edge_agent.mesh.assembly import build_node
    from edge_agent.mesh.settings import MeshLimits, SessionLimits
    from edge_agent.mesh.state import HouseholdState
    from edge_agent.mesh.transports.mqtt import MqttConnector

    limits = MeshLimits(sessions=SessionLimits(enabled=not v1))
    node = build_node(HouseholdState(home), limits)
    node.session = session
    connector = MqttConnector(
        "127.0.0.1", port, household=node.household, device=node.device_id, client_id=client_id, qos=qos
    )
    node.transport = connector.connect(None)
    return node


async def hearth_echo(port: int, home: Path, qos: int, v1: bool) -> None:
    from edge_agent.mesh.envelope import Opened
    from edge_agent.mesh.interfaces import Channel

    node = node_at(home, port, f"mesh-echo-{home.name}", qos, ECHO_SESSION, v1=v1)  # one client id each
    transport = node.transport
    assert transport is not None
    replies: set[asyncio.Task[None]] = set()
    async with transport:
        print("ready", flush=True)
        async for msg in node.receive(transport):
            if not isinstance(msg, Opened):
                continue
            # Each reply in its own task, as the endpoint serves requests concurrently.
            reply = asyncio.create_task(
                node.send(msg.sender.device_id, Channel.RESPONSES, msg.payload, session=REQUESTER_SESSION)
            )
            replies.add(reply)
            reply.add_done_callback(replies.discard)


async def direct_echo(home: Path) -> None:
    from edge_agent.errors import DirectLinkError
    from edge_agent.mesh.assembly import build_node
    from edge_agent.mesh.direct import Ask, DirectLinks
    from edge_agent.mesh.interfaces import Channel
    from edge_agent.mesh.state import HouseholdState

    async def nothing(requester: str, ask: Ask) -> bytes:
        raise DirectLinkError("not held")

    node = build_node(HouseholdState(home))
    replies: set[asyncio.Task[None]] = set()
    async with DirectLinks(node, nothing, host="127.0.0.1") as links:

        class Echo:
            def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
                reply = asyncio.create_task(links.send_message(device_id, None, Channel.RESPONSES, payload))
                replies.add(reply)
                reply.add_done_callback(replies.discard)

            def link_down(self, device_id: str) -> None:
                pass

        links.carry(Echo())
        assert links.contact is not None
        print(f"ready {links.contact.port} {links.contact.tls_sha256}", flush=True)
        await asyncio.Event().wait()


async def tls_echo() -> None:
    from edge_agent.mesh.direct.tls import fingerprint, self_signed, server_context

    cert, key = self_signed("0" * 32)
    context = server_context(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                (n,) = LENGTH.unpack(await reader.readexactly(4))
                writer.write(LENGTH.pack(n) + await reader.readexactly(n))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port} {fingerprint(cert)}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", choices=["raw", "hearth", "direct", "tls"])
    parser.add_argument("port", type=int)
    parser.add_argument("--home", type=Path, help="the answering device's household state (hearth, direct)")
    parser.add_argument("--qos", type=int, default=1, choices=[0, 1])
    parser.add_argument("--v1", action="store_true", help="hearth: the v1 envelope (sessions off)")
    args = parser.parse_args()
    if args.stack == "raw":
        raw_echo(args.port, args.qos)
        return
    from edge_agent import aio

    if args.stack == "tls":
        aio.run(tls_echo())
        return
    if args.home is None:
        parser.error(f"{args.stack} needs --home")
    if args.stack == "hearth":
        aio.run(hearth_echo(args.port, args.home, args.qos, args.v1))
    else:
        aio.run(direct_echo(args.home))


if __name__ == "__main__":
    main()
