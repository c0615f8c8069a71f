"""``hearth demo`` (what `make run` runs): a hub and a fridge panel, paired, the fridge's chat offloaded.

Two real agent processes on one machine: the hub (`hearth run -c config/hub.toml`, embedded broker,
runs the LLM) and the fridge panel (`hearth run -c config/fridge-panel.toml --demo`), whose plan says the
LLM is offload-only. On first run the fridge pairs with the hub through a real invitation (setup code,
SPAKE2) over the hub's broker. Both keep their keys under <home>/demo/{hub,fridge}.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from aiocoap import CON, CONTENT, GET, Message

from edge_agent import aio, processes
from edge_agent.cli.common import console, load_config_only, load_context
from edge_agent.errors import HearthError
from edge_agent.mesh.broker import EmbeddedBroker
from edge_agent.mesh.pairing import DevicePairing, Invitation, new_session
from edge_agent.mesh.pairing_link import pair_with_hub, serve_invitation
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.mesh.transports.mqtt import MqttClient
from edge_agent.paths import hearth_home
from edge_agent.tasks import TASKS


class DemoTransport(enum.StrEnum):
    MQTT = "mqtt"
    COAP = "coap"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise HearthError(f"the hub agent exited with code {proc.returncode} before its broker came up")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise HearthError(f"the hub's embedded broker did not open port {port} within {timeout:g} s")


async def _pair(hub: HouseholdState, fridge: HouseholdState, port: int, fridge_cfg: Path) -> str:
    ctx = load_context(fridge_cfg, None)
    root, root_file = hub.load_root()
    household = hub.load()
    invitation = Invitation(
        root,
        bytes.fromhex(root_file.group_key),
        root_file.group_epoch,
        roster=[household.certificate, *household.peers],
        requests=list(TASKS),  # the demo's point: the fridge asks the hub to chat (an operator's choice)
    )

    def make(invitation_id: str, session: str) -> DevicePairing:
        return DevicePairing(
            fridge.identity,
            invitation.code,
            invitation_id,
            session=session,
            name=ctx.config.agent.name,
            profile=ctx.profile.id,
            requests=list(TASKS),
            serves=list(ctx.profile.serves),
        )

    session = new_session()
    async with (
        MqttClient("127.0.0.1", port, client_id="demo-hub-invite") as hub_link,
        MqttClient("127.0.0.1", port, client_id=session) as fridge_link,
    ):
        served = asyncio.create_task(
            serve_invitation(hub_link, invitation, lambda c: hub.record_issued(root, c))
        )
        await asyncio.sleep(0.2)
        welcome = await pair_with_hub(fridge_link, make, session=session, timeout=20)
        await served
    fridge.save(HouseholdFile.from_welcome(welcome))
    return invitation.code


async def _pair_over_a_broker(
    hub: HouseholdState, fridge: HouseholdState, port: int, fridge_cfg: Path
) -> str:
    """Pair the fridge through an embedded broker that lives only as long as the pairing."""
    broker = EmbeddedBroker("127.0.0.1", port)
    await broker.start()
    try:
        return await _pair(hub, fridge, port, fridge_cfg)
    finally:
        await broker.stop()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_coap(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the hub serves its presence on CoAP (it has announced itself), asking once a second."""
    request = Message(code=GET, uri_path=("hearth", "presence"))
    end = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(1.0)
        mid = 0
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise HearthError(f"the hub agent exited with code {proc.returncode} before serving CoAP")
            mid += 1
            request.mtype, request.mid, request.token = CON, mid, mid.to_bytes(2, "big")
            probe.sendto(request.encode(), ("127.0.0.1", port))
            try:
                answer = Message.decode(probe.recv(2048))
            except (TimeoutError, ConnectionRefusedError):
                continue  # not bound yet
            except ValueError:
                continue
            if answer.code == CONTENT:
                return
            time.sleep(0.2)  # bound, nothing announced yet
    raise HearthError(f"the hub did not serve its presence on CoAP port {port} within {timeout:g} s")


def _coap_env(port: int, peer: int) -> dict[str, str]:
    """A broker-less agent on loopback: CoAP only, the other agent as its one peer (loopback has no
    multicast, so no discovery beyond that)."""
    return {
        "HEARTH_MESH__TRANSPORTS": '["coap"]',
        "HEARTH_MESH__EMBEDDED_BROKER": "false",
        "HEARTH_MESH__COAP__BIND": "127.0.0.1",
        "HEARTH_MESH__COAP__PORT": str(port),
        "HEARTH_MESH__COAP__PEERS": f'["127.0.0.1:{peer}"]',
        "HEARTH_MESH__COAP__MULTICAST": "false",
        "HEARTH_MESH__COAP__ZEROCONF": "false",
    }


def demo(
    hub_config: Annotated[Path, typer.Option(help="The hub agent's config.")] = Path("config/hub.toml"),
    fridge_config: Annotated[Path, typer.Option(help="The fridge panel's config.")] = Path(
        "config/fridge-panel.toml"
    ),
    transport: Annotated[
        DemoTransport,
        typer.Option(
            help="mqtt: through the hub's embedded broker. coap: no broker at all, the two agents talk "
            "CoAP over UDP with OSCORE (pairing, once, still uses a broker this command runs for it).",
        ),
    ] = DemoTransport.MQTT,
) -> None:
    """Run a hub and a fridge-panel agent; the fridge's chat is served by the hub and streamed back.

    Example: hearth demo --transport coap   (the broker-less pair)
    """
    load_config_only(hub_config)  # validates it, and applies its [agent] home
    base = hearth_home() / "demo"
    dirs = {"hub": base / "hub", "fridge": base / "fridge"}
    hub, fridge = HouseholdState(dirs["hub"]), HouseholdState(dirs["fridge"])
    if not hub.is_root():
        ctx = load_context(hub_config, None)
        hub.init_household(
            name=ctx.config.agent.name,
            profile=ctx.profile.id,
            requests=list(TASKS),
            serves=list(ctx.profile.serves),
            device_class=ctx.profile.device_class,
        )
        console.print(f"created household {hub.load().certificate.household_id} on the hub")
    port = _free_port()
    env = dict(os.environ, HEARTH_MESH__BROKER=f"mqtt://127.0.0.1:{port}")
    hub_env = dict(env, HEARTH_MESH__STATE_DIR=str(dirs["hub"]), HEARTH_AGENT__LOG_LEVEL="warning")
    fridge_env = dict(env, HEARTH_MESH__STATE_DIR=str(dirs["fridge"]), HEARTH_AGENT__LOG_LEVEL="warning")
    coap = transport is DemoTransport.COAP
    if coap:
        if not fridge.is_member():  # pairing is one act over a broker; after it, none is needed
            code = aio.run(_pair_over_a_broker(hub, fridge, port, fridge_config))
            console.print(
                f"paired the fridge panel with setup code {code} (SPAKE2, over a broker run for it)"
            )
        hub_port, fridge_port = _free_udp_port(), _free_udp_port()
        hub_env.update(_coap_env(hub_port, fridge_port))
        fridge_env.update(_coap_env(fridge_port, hub_port))
    exe = [sys.executable, "-m", "edge_agent"]
    where = (
        f"no broker: CoAP + OSCORE on udp 127.0.0.1:{hub_port}"
        if coap
        else f"embedded broker on 127.0.0.1:{port}"
    )
    console.print(f"[bold]starting the hub agent[/] ({where}, LLM self-benchmark)")
    hub_proc = subprocess.Popen(
        [*exe, "run", "--config", str(hub_config)], env=hub_env, stdout=subprocess.DEVNULL
    )
    try:
        if coap:
            _wait_coap(hub_port, hub_proc, 120)
        else:
            _wait_port(port, hub_proc, 60)
        if not fridge.is_member():
            code = aio.run(_pair(hub, fridge, port, fridge_config))
            console.print(f"paired the fridge panel with setup code {code} (SPAKE2 over the hub's broker)")
        console.print("[bold]starting the fridge-panel agent[/] and sending it a chat")
        # Warnings only, as for the hub: INFO lines (loads, self-benchmarks) would interleave with the demo.
        rc = subprocess.call([*exe, "run", "--config", str(fridge_config), "--demo"], env=fridge_env)
        if rc != 0:
            raise HearthError(f"the fridge-panel agent failed (exit code {rc})")
    finally:
        processes.stop(hub_proc)
