"""``hearth broker config``: a production Mosquitto for this household (mutual TLS, per-device ACLs)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.cli.common import console, load_config_only, mesh_state_dir
from edge_agent.errors import HearthError
from edge_agent.mesh.broker import mosquitto_config
from edge_agent.mesh.broker_pki import BrokerPki, write_public
from edge_agent.mesh.state import HouseholdState

app = typer.Typer(help="The MQTT broker the mesh runs through.", no_args_is_help=True)


def _default_hostnames() -> list[str]:
    host = socket.gethostname()
    return ["localhost", "127.0.0.1", host, f"{host}.local"]


@app.command("config")
def config(
    out: Annotated[Path, typer.Option(help="Directory for mosquitto.conf, ACLs, certificates.")] = Path(
        "mosquitto"
    ),
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="Name or address agents use to reach the broker (repeat; goes into the server "
            "certificate). Default: localhost, 127.0.0.1, this host's name and <name>.local.",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Members' TLS listener.", min=1, max=65535)] = 8883,
    pairing_port: Annotated[
        int, typer.Option(help="Pairing-only TLS listener (0: none).", min=0, max=65535)
    ] = 8884,
    bind: Annotated[str, typer.Option(help="Listen address.")] = "0.0.0.0",
    persistence_dir: Annotated[
        Path | None, typer.Option(help="Keep retained messages here across broker restarts.")
    ] = None,
    config_path: Annotated[Path | None, typer.Option("--config", "-c", help="Agent config TOML.")] = None,
) -> None:
    """Run on the hub. Writes a Mosquitto config with two TLS 1.3 listeners: members (client
    certificate required, CN = device id, acl_file patterns confine each device to its own topics)
    and pairing (anonymous, pairing topics only).

    The hub becomes a small CA for the broker: it creates the CA (once), the broker's server
    certificate, its own client certificate, and from then on issues one to every device it pairs
    (`hearth household invite`). `hearth household revoke` updates the CRL the broker checks.

    Example: hearth broker config -c config/hub.toml --out /etc/mosquitto/conf.d/hearth --hostname hub.lan
    Then: mosquitto -c /etc/mosquitto/conf.d/hearth/mosquitto.conf
    """
    if pairing_port == port:
        raise HearthError(f"--pairing-port {pairing_port} is the members' --port; pick another")
    state = HouseholdState(mesh_state_dir(load_config_only(config_path)))
    if not state.is_root():
        raise HearthError(
            f"{state.dir} holds no household root: run this on the hub (after `hearth household init`)"
        )
    household = state.load()
    hub = household.certificate
    names = hostname or _default_hostnames()
    pki = BrokerPki(state.dir)
    pki.create_ca(hub.household_id)
    pki.write_crl(household.crl.revoked)
    if not pki.has_client_identity():
        pki.issue_own_client(hub.device_id, hub.expires_at)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    cafile, certfile, keyfile = out / "ca.crt", out / "server.crt", out / "server.key"
    crlfile = out / "crl.pem"
    write_public(cafile, pki.ca_pem())
    pki.issue_server(names, certfile, keyfile)
    pki.publish_crl(crlfile)
    files = mosquitto_config(
        out,
        hub.household_id,
        hub.device_id,
        cafile=cafile,
        certfile=certfile,
        keyfile=keyfile,
        crlfile=crlfile,
        port=port,
        pairing_port=pairing_port or None,
        bind=bind,
        persistence_dir=persistence_dir,
    )
    console.print(
        f"wrote {files.config}, {files.member_acl.name}, {files.pairing_acl.name} and a server "
        f"certificate for {', '.join(names)}",
        markup=False,
    )
    console.print(f"run: mosquitto -c {files.config}", markup=False)
    snippet = f'[mesh]\nbroker = "mqtts://{names[0]}:{port}"'
    if pairing_port:
        snippet += f'\npairing_broker = "mqtts://{names[0]}:{pairing_port}"'
    console.print("agents' config:\n" + snippet, markup=False, highlight=False)
