"""``hearth broker config``: a production Mosquitto for this household (mutual TLS, per-device ACLs)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.cli.common import console, console_err, load_config_only, mesh_state_dir
from edge_agent.config import MeshSection
from edge_agent.connect import member_client
from edge_agent.errors import HearthError
from edge_agent.mesh.broker import mosquitto_config
from edge_agent.mesh.broker_pki import BrokerPki, write_public
from edge_agent.mesh.pairing_window import PairingListener, open_pairing_window
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import MqttClient

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
        int,
        typer.Option(
            help="Pairing listener, open only while `hearth household invite` runs (0: none).",
            min=0,
            max=65535,
        ),
    ] = 8884,
    bind: Annotated[str, typer.Option(help="Listen address.")] = "0.0.0.0",
    persistence_dir: Annotated[
        Path | None, typer.Option(help="Keep retained messages here across broker restarts.")
    ] = None,
    config_path: Annotated[Path | None, typer.Option("--config", "-c", help="Agent config TOML.")] = None,
) -> None:
    """Run on the hub. Writes a Mosquitto config with one TLS 1.3 listener for members (client
    certificate required, CN = device id, acl_file patterns confine each device to its own topics).
    Pairing gets no listener there: `hearth household invite` opens one on --pairing-port for its
    invitation only (a Mosquitto of its own, anonymous, that invitation's topics only, nothing
    retained, connections counted), and closes it when the invitation closes.

    The hub becomes a small CA for the broker: it creates the CA (once), the broker's server
    certificate, its own client certificate, and from then on issues one to every device it pairs
    (`hearth household invite`). `hearth household revoke` updates the CRL the broker checks; the
    CRL is short-lived, and the running hub agent renews it and reloads Mosquitto (SIGHUP).

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
        bind=bind,
        persistence_dir=persistence_dir,
    )
    pki.record_broker(files.config)  # so the hub agent can reload it after renewing the CRL
    (out / "acl-pairing").unlink(missing_ok=True)  # an older config's always-open pairing listener
    if pairing_port:
        PairingListener(port=pairing_port, bind=bind, hostnames=names).save(state.dir)
    else:
        PairingListener.remove(state.dir)
    console.print(
        f"wrote {files.config}, {files.member_acl.name} and a server certificate for {', '.join(names)}",
        markup=False,
    )
    console.print(f"run: mosquitto -c {files.config}", markup=False)
    snippet = f'[mesh]\nbroker = "mqtts://{names[0]}:{port}"'
    if pairing_port:
        snippet += f'\npairing_broker = "mqtts://{names[0]}:{pairing_port}"'
    console.print("agents' config:\n" + snippet, markup=False, highlight=False)


@app.command("renew-crl")
def renew_crl(
    config_path: Annotated[Path | None, typer.Option("--config", "-c", help="Agent config TOML.")] = None,
) -> None:
    """Sign the broker's CRL again now and reload Mosquitto. The running hub agent (`hearth run`) does
    this by itself before the CRL expires (it lives days); without one, run this from cron daily: an
    expired CRL makes Mosquitto refuse every device.
    """
    state = HouseholdState(mesh_state_dir(load_config_only(config_path)))
    pki = BrokerPki(state.dir)
    if not pki.has_ca():
        raise HearthError(f"{state.dir} holds no broker CA: run `hearth broker config` on the hub first")
    listed = pki.write_crl(state.load().crl.revoked)
    reloaded = pki.reload_brokers().describe()
    console.print(f"signed a new broker CRL ({listed} certificates revoked); {reloaded}", markup=False)


@contextlib.asynccontextmanager
async def invitation_link(
    mesh: MeshSection, state_dir: Path, client_id: str, invitation: str, hub_device: str, url: str | None
) -> AsyncIterator[tuple[MqttClient, bool]]:
    """Where `hearth household invite` serves its invitation, as (link, retain the announcement).

    On a hub whose broker `hearth broker config` set up (and no --broker given): the pairing window,
    a listener open for this invitation only (`edge_agent.mesh.pairing_window`), where nothing is
    retained. Otherwise the household broker itself (the embedded one, or Home Assistant's)."""
    listener = None if url else PairingListener.load(state_dir)
    if listener is None:
        async with member_client(mesh, state_dir, client_id, url=url) as link:
            yield link, True
        return
    async with open_pairing_window(state_dir, listener, invitation, hub_device) as window:
        console_err.print(
            f"pairing listener open on {listener.bind}:{listener.port} until the invitation closes",
            markup=False,
        )
        async with window.hub_link(client_id) as link:
            yield link, False
