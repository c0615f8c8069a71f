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


def node_at(home: Path, port: int, client_id: str, qos: int) -> MeshNode:
    """The MeshNode of the device whose household state is in ``home``, on a loopback broker."""
    from edge_agent.mesh.node import MeshNode
    from edge_agent.mesh.state import HouseholdState
    from edge_agent.mesh.transports.mqtt import MqttTransport

    state = HouseholdState(home)
    membership, data = state.membership()
    transport = MqttTransport("127.0.0.1", port, client_id=client_id, qos=qos)
    return MeshNode(state.identity, membership, transport, state.counters_dir,
                    group_key=bytes.fromhex(data.group_key), group_epoch=data.group_epoch)  # fmt: skip


async def hearth_echo(port: int, home: Path, qos: int) -> None:
    from edge_agent.mesh import topics
    from edge_agent.mesh.node import Departed

    node = node_at(home, port, "mesh-echo", qos)
    transport = node.transport
    replies: set[asyncio.Task[None]] = set()
    async with transport:
        await node.start()
        print("ready", flush=True)
        async for msg in node.receive():
            if isinstance(msg, Departed):
                continue
            # Each reply in its own task, as the endpoint serves requests concurrently.
            reply = asyncio.create_task(
                node.send(msg.sender, topics.responses(node.household, msg.sender.device_id), msg.payload)
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
