"""The answering side of the mesh benchmark, in its own process (as the serving device would be).

    python -m benchmarks.mesh_echo raw PORT [--qos 1]
    python -m benchmarks.mesh_echo hearth PORT --home HOME [--qos 1]

Prints ``ready`` once subscribed, then echoes every request to the requester's reply topic until
it is terminated (the benchmark stops it by PID). Raw: paho with its network thread, republishing the bytes as they are. Hearth: a
MeshNode on aiomqtt that opens each envelope and seals the payload back to its sender; each reply is
its own task, as the endpoint serves requests concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.mesh.node import MeshNode

RAW_REQ, RAW_RESP = "raw/req", "raw/resp"
ECHO_SESSION, REQUESTER_SESSION = "e" * 16, "f" * 16
"""Fixed sessions for the two benchmark nodes (a real agent draws a random one per start)."""


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


def node_at(home: Path, port: int, client_id: str, qos: int, session: str) -> MeshNode:
    """The MeshNode of the device whose household state is in ``home``, connected to a loopback broker."""
    from edge_agent.mesh.assembly import build_node
    from edge_agent.mesh.state import HouseholdState
    from edge_agent.mesh.transports.mqtt import MqttConnector

    node = build_node(HouseholdState(home))
    node.session = session
    connector = MqttConnector(
        "127.0.0.1", port, household=node.household, device=node.device_id, client_id=client_id, qos=qos
    )
    node.transport = connector.connect(None)
    return node


async def hearth_echo(port: int, home: Path, qos: int) -> None:
    from edge_agent.mesh.envelope import Opened
    from edge_agent.mesh.interfaces import Channel

    node = node_at(home, port, "mesh-echo", qos, ECHO_SESSION)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", choices=["raw", "hearth"])
    parser.add_argument("port", type=int)
    parser.add_argument("--home", type=Path, help="the answering device's household state (hearth)")
    parser.add_argument("--qos", type=int, default=1, choices=[0, 1])
    args = parser.parse_args()
    if args.stack == "raw":
        raw_echo(args.port, args.qos)
    else:
        if args.home is None:
            parser.error("hearth needs --home")
        from edge_agent import aio

        aio.run(hearth_echo(args.port, args.home, args.qos))


if __name__ == "__main__":
    main()
