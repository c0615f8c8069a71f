"""``hearth broker config``: a production Mosquitto config (TLS + per-device ACLs) for this household."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_agent.cli.common import console, load_config_only, mesh_state_dir
from edge_agent.errors import HearthError
from edge_agent.mesh.broker import mosquitto_config
from edge_agent.mesh.state import HouseholdState

app = typer.Typer(help="The MQTT broker the mesh runs through.", no_args_is_help=True)


@app.command("config")
def config(
    out: Annotated[Path, typer.Option(help="Directory to write mosquitto.conf and acl into.")] = Path(
        "mosquitto"
    ),
    cafile: Annotated[
        Path, typer.Option(help="CA that issues the devices' client certificates (CN = device id).")
    ] = Path("ca.crt"),
    certfile: Annotated[Path, typer.Option(help="The broker's TLS certificate.")] = Path("server.crt"),
    keyfile: Annotated[Path, typer.Option(help="The broker's TLS key.")] = Path("server.key"),
    port: Annotated[int, typer.Option(help="TLS listener port.", min=1, max=65535)] = 8883,
    bind: Annotated[str, typer.Option(help="Listen address.")] = "0.0.0.0",
    household: Annotated[str | None, typer.Option(help="Household id (default: this device's).")] = None,
    config_path: Annotated[Path | None, typer.Option("--config", "-c", help="Agent config TOML.")] = None,
) -> None:
    """Write a Mosquitto config: TLS 1.3 listener with client certificates, and acl_file patterns so
    each device may read only its own request/response topics and write only its own presence.

    Example: hearth broker config --out /etc/mosquitto/conf.d/hearth --cafile ca.crt \\
             --certfile broker.crt --keyfile broker.key
    Then: mosquitto -c /etc/mosquitto/conf.d/hearth/mosquitto.conf
    """
    hh = (
        household
        or HouseholdState(mesh_state_dir(load_config_only(config_path))).load().certificate.household_id
    )
    for label, path in (("--cafile", cafile), ("--certfile", certfile), ("--keyfile", keyfile)):
        if not path.is_file():
            raise HearthError(f"{label} {path}: no such file")
    files = mosquitto_config(
        out,
        hh,
        port=port,
        bind=bind,
        cafile=cafile.resolve(),
        certfile=certfile.resolve(),
        keyfile=keyfile.resolve(),
    )
    console.print(f"wrote {files.config} and {files.acl}; run: mosquitto -c {files.config}")
