"""``hearth household ...`` (the hub's root of trust) and ``hearth pair`` (joining a household)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, get_args

import typer
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from pydantic import ValidationError
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from edge_agent import aio
from edge_agent.cli.common import (
    ConfigOpt,
    ProfileOpt,
    console,
    console_err,
    load_config_only,
    load_context,
    mesh_state_dir,
    setup_logging,
)
from edge_agent.config import AgentConfig
from edge_agent.connect import pairing_client
from edge_agent.errors import ConfigError, HearthError
from edge_agent.mesh.broker_pki import BrokerPki, broker_certificate_issuer
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.pairing import DEFAULT_REQUESTS, MAX_LIFETIME, Invitation, PairingError, new_session
from edge_agent.mesh.pairing_link import serve_invitation
from edge_agent.mesh.state import HouseholdState
from edge_agent.sync.keys import UpdateKey, UpdateKeySet, sign_key_set
from edge_agent.sync.store import UpdateStore
from edge_agent.tasks import TASKS, DeviceClass, Task

app = typer.Typer(
    help="The household: its root of trust (on the hub), invitations, members, revocation.",
    no_args_is_help=True,
)


@dataclass
class _Cfg:
    config: AgentConfig


@app.command()
def init(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Create a household with this device (the hub) as its root of trust and first member.

    Example: hearth household init --config config/hub.toml
    """
    ctx = load_context(config, profile)
    state = HouseholdState(mesh_state_dir(ctx.config))
    data = state.init_household(
        name=ctx.config.agent.name,
        profile=ctx.profile.id,
        requests=list(TASKS),
        serves=list(ctx.profile.serves),
        device_class=ctx.profile.device_class,
    )
    console.print(
        f"household [bold]{data.certificate.household_id}[/] created; this device "
        f"'{data.certificate.name}' ({data.certificate.device_id}) holds its root key in {state.dir}"
    )
    console.print("next: `hearth household invite` here, then `hearth pair CODE` on the new device")


def _tasks(names: list[str], option: str) -> list[Task]:
    if option == "--requests" and names in (["all"], ["none"]):
        return list(TASKS) if names == ["all"] else []
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise ConfigError(f"{option} {bad[0]!r} is not a task ({', '.join(TASKS)})")
    return [t for t in TASKS if t in names]


def _defaults() -> str:
    return "; ".join(f"{cls}: {', '.join(tasks)}" for cls, tasks in DEFAULT_REQUESTS.items())


@app.command()
def invite(
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    minutes: Annotated[float, typer.Option(help="Invitation lifetime (at most 15).", min=0.1, max=15)] = 10,
    broker: Annotated[
        str | None, typer.Option(help="Broker URL (default: the config's [mesh] broker).")
    ] = None,
    serves: Annotated[
        list[str] | None,
        typer.Option("--serves", help="A task the new device may serve for peers (repeat it); default none."),
    ] = None,
    device_class: Annotated[
        str, typer.Option("--class", help="The new device's class: " + ", ".join(get_args(DeviceClass)) + ".")
    ] = "appliance",
    requests: Annotated[
        list[str] | None,
        typer.Option(
            "--requests",
            help="A task the new device may ask peers to run (repeat it; 'all' or 'none'); default by "
            "class: " + _defaults() + ".",
        ),
    ] = None,
    may_correct: Annotated[
        bool,
        typer.Option(
            "--may-correct",
            help="Let the new device author shared translation corrections (every device then answers "
            "those sentences with them, before any model); default no. The hub always may.",
        ),
    ] = False,
) -> None:
    """Show a one-time setup code and wait for one device to pair with it (`hearth pair CODE`).

    You decide here what the device is, what it may ask for, what it may serve and whether it may
    correct translations for the whole household: a plug must not enrol itself as a hub that receives
    everyone's prompts, nor rewrite what "Turn off the oven." means on every device. Example: `hearth
    household invite --class laptop --serves generate --serves translate --may-correct`; a fridge panel
    with voice and chat: `--requests generate --requests translate --requests transcribe --requests vad`.
    The code is checked with SPAKE2, so watching the exchange does not reveal it; tries are limited to 3
    at once, then one per 40 s; the invitation closes after one pairing, 20 tries, or its lifetime.
    """
    from datetime import timedelta

    approved_serves = _tasks(serves or [], "--serves")
    if device_class not in get_args(DeviceClass):
        raise ConfigError(f"--class {device_class!r} is not one of {', '.join(get_args(DeviceClass))}")
    approved_requests = (
        _tasks(requests, "--requests") if requests else list(DEFAULT_REQUESTS[device_class])  # type: ignore[index]
    )
    ctx = load_context(config, profile)
    setup_logging("warning")
    state = HouseholdState(mesh_state_dir(ctx.config))
    root, root_file = state.load_root()
    household = state.load()
    roster = [household.certificate] + [
        p for p in household.peers if p.device_id not in household.crl.revoked
    ]
    inv = Invitation(
        root,
        bytes.fromhex(root_file.group_key),
        root_file.group_epoch,
        roster=roster,
        lifetime=min(MAX_LIFETIME, timedelta(minutes=minutes)),
        issue_tls=broker_certificate_issuer(state.dir),
        serves=approved_serves,
        device_class=device_class,  # type: ignore[arg-type]  # checked above
        requests=approved_requests,
        may_correct=may_correct,
    )
    console.print(
        Panel.fit(
            f"[bold]{inv.code}[/]",
            title="setup code",
            subtitle=f"valid until {inv.expires.astimezone():%H:%M:%S}",
        )
    )
    console.print("on the new device: [bold]hearth pair " + inv.code + "[/]  (waiting…)")

    def paired(cert: object) -> None:
        state.record_issued(root, cert)  # type: ignore[arg-type]

    async def go() -> None:
        from edge_agent.cli.broker import invitation_link  # the pairing listener, open for this invitation

        hub = household.certificate.device_id
        link = invitation_link(ctx.config.mesh, state.dir, f"{hub}-invite", inv.invitation_id, hub, broker)
        async with link as (transport, retain):
            try:
                cert = await serve_invitation(transport, inv, paired, retain=retain)
            except PairingError as exc:
                raise PairingError(_closed(inv, exc)) from None
        console.print(
            f"[green]paired[/] '{escape(cert.name)}' ({escape(cert.profile)}) as {cert.device_id}; "
            f"it may request {', '.join(cert.requests) or 'nothing'} and serve "
            f"{', '.join(cert.serves) or 'nothing'}"
            + ("; it may correct translations for the household" if cert.may_correct else "")
        )

    aio.run(go())


def _closed(inv: Invitation, exc: PairingError) -> str:
    """The hub's last word on an invitation that ended unpaired: what happened, honestly."""
    why = inv.used_up if inv.attempts_left <= 0 else str(exc)
    if inv.paused:
        why += (
            f" ({inv.paused} setup-code tries were turned away for coming too fast: someone may be "
            "guessing; look for an unknown device on your network)"
        )
    return why


def pair(
    code: Annotated[
        str, typer.Argument(help="The setup code `hearth household invite` shows, e.g. 4827-1930.")
    ],
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    broker: Annotated[
        str | None, typer.Option(help="Broker URL (default: the config's [mesh] broker).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, max=3600, help="Seconds to wait for the hub.")] = 30,
) -> None:
    """Join the household of the hub that shows CODE. Run it on the new device.

    Example: hearth pair 4827-1930 --config config/fridge-panel.toml
    """
    from edge_agent.mesh.pairing import validate_code

    validate_code(code)  # refuse a mistyped code before touching the network
    ctx = load_context(config, profile)
    setup_logging("warning")
    state = HouseholdState(mesh_state_dir(ctx.config))
    if state.is_member():
        raise HearthError(f"this device already belongs to a household ({state.household_path})")

    async def go() -> None:
        from edge_agent.mesh.join import join_household

        session = new_session()  # also the MQTT client id: the pairing listener binds it to our topics
        async with pairing_client(ctx.config.mesh, broker, session=session) as transport:
            welcome = await join_household(
                transport, state, code, session=session, name=ctx.config.agent.name,
                profile=ctx.profile.id, requests=list(TASKS), serves=list(ctx.profile.serves),
                timeout=timeout,
            )  # fmt: skip
        cert = welcome.certificate
        console.print(
            f"[green]joined[/] household {cert.household_id} as '{escape(cert.name)}' ({cert.device_id}); "
            f"{len(welcome.roster)} members known; the hub lets it request "
            f"{', '.join(cert.requests) or 'nothing'} and serve {', '.join(cert.serves) or 'nothing'}"
        )

    try:
        aio.run(go())
    except TimeoutError:
        raise HearthError(
            f"no open invitation answered within {timeout:g} s: run `hearth household invite` "
            "on the hub and check the broker address"
        ) from None


@app.command()
def show(config: ConfigOpt = None) -> None:
    """This device's household: id, own certificate, members, revocations."""
    ctx = _Cfg(load_config_only(config))
    state = HouseholdState(mesh_state_dir(ctx.config))
    data = state.load()
    me = data.certificate
    console.print(
        f"household {me.household_id} · this device '{me.name}' {me.device_id}"
        + (" · holds the root key" if state.is_root() else "")
    )
    table = Table("name", "device id", "profile", "requests", "serves", "corrects", "expires", "status")
    for cert in [me, *data.peers]:
        status = "revoked" if cert.device_id in data.crl.revoked else "ok"
        table.add_row(
            escape(cert.name),
            cert.device_id,
            escape(cert.profile),
            ",".join(cert.requests),
            ",".join(cert.serves),
            "admin" if cert.admin else "yes" if cert.may_correct else "no",
            f"{cert.expires_at:%Y-%m-%d}",
            status,
        )
    console.print(table)
    console.print(f"revocation list version {data.crl.version}: {len(data.crl.revoked)} revoked")


@app.command()
def revoke(
    device: Annotated[str, typer.Argument(help="Device id (or its unique name) to revoke.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a member (hub only). Every peer refuses it once it sees the new signed list."""
    ctx = _Cfg(load_config_only(config))
    state = HouseholdState(mesh_state_dir(ctx.config))
    data = state.load()
    matches = [c for c in data.peers if device in (c.device_id, c.name)]
    if len(matches) != 1:
        raise HearthError(
            f"{device!r} matches {len(matches)} members; use the device id from `hearth household show`"
        )
    crl = state.revoke([matches[0].device_id])
    console_err.print(
        f"revoked '{matches[0].name}' ({matches[0].device_id}); revocation list version {crl.version}. "
        "Running agents publish it with their next presence."
    )
    pki = BrokerPki(state.dir)
    if pki.has_ca():  # the broker refuses the device's new connections once it rereads its CRL
        console_err.print(
            f"The broker's certificate revocation list is updated ({pki.crl_path}); "
            f"{pki.reload_brokers().describe()}. Restart Mosquitto to drop a connection it already has.",
            markup=False,
        )
    if ctx.config.home_assistant.mqtt_discovery:
        _clear_from_home_assistant(ctx.config, state, matches[0])


def _clear_from_home_assistant(config: AgentConfig, state: HouseholdState, cert: DeviceCertificate) -> None:
    """Remove the revoked device from Home Assistant now (empty retained discovery config): no agent
    may be running to do it, and a ghost device would stay there otherwise."""
    from edge_agent.ha_discovery.agent import clear_revoked

    try:
        aio.run(clear_revoked(config, state.dir, [cert.device_id]))
    except (HearthError, TimeoutError, OSError) as exc:  # the revocation itself is done
        console_err.print(
            f"[yellow]warning[/]: could not remove '{escape(cert.name)}' from Home Assistant's MQTT "
            f"discovery ({escape(str(exc) or type(exc).__name__)}); a running agent of this household "
            "with mqtt_discovery on does it when it sees the new revocation list"
        )
        return
    console_err.print(f"removed '{escape(cert.name)}' from Home Assistant (MQTT discovery)")


def _key_card(key: UpdateKey) -> str:
    return f"{key.name}:{key.public_key}"


def _parse_card(card: str) -> UpdateKey:
    name, _, public = card.rpartition(":")
    try:
        return UpdateKey.of(VerifyKey(bytes.fromhex(public)), name)
    except (ValueError, ValidationError, CryptoError):
        raise HearthError(
            f"{card!r} is not an update key card (NAME:PUBLICKEY, as `hearth household update-key` prints)"
        ) from None


@app.command("update-key")
def update_key(
    name: Annotated[str | None, typer.Option(help="Who holds the key (default: this device's name).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create this device's model-update signing key (once), and print its key card.

    The hub lists key cards in the household's update key set (`hearth household update-keys`); packs
    are then signed by those keys, never by the household root. Example:
    hearth household update-key --config config/hub.toml
    """
    ctx = _Cfg(load_config_only(config))
    state = HouseholdState(mesh_state_dir(ctx.config))
    data = state.load()
    store = UpdateStore(state.dir)
    if store.key_path.exists():
        _, key = store.signing_key()
        console_err.print(f"this device already holds update key {key.keyid[:8]} ({store.key_path})")
    else:
        key = store.create_signing_key(name or data.certificate.name)
        console_err.print(f"created update key {key.keyid[:8]} in {store.key_path} (keep it secret)")
    console.print(_key_card(key))


@app.command("update-keys")
def update_keys(
    cards: Annotated[
        list[str] | None,
        typer.Argument(help="Key cards (NAME:PUBLICKEY) of the new set; none: show the current set."),
    ] = None,
    threshold: Annotated[int, typer.Option(min=1, help="Signatures a pack needs (k of the n keys).")] = 1,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Days the key set stays valid.")] = 365,
    config: ConfigOpt = None,
) -> None:
    """Show the household's update key set, or (hub only) sign a new one listing CARDS.

    Keys left out of a new set are revoked for good. Example, 2 of 3:
    hearth household update-keys hub:ab12… alice:cd34… bob:ef56… --threshold 2
    """
    ctx = _Cfg(load_config_only(config))
    state = HouseholdState(mesh_state_dir(ctx.config))
    membership, _data = state.membership()
    store = UpdateStore(state.dir)
    trusted, problems = store.load_trust(membership.root_key, membership.household_id)
    for problem in problems:
        console_err.print(f"[yellow]warning[/]: {escape(problem)}")
    if cards:
        root, _ = state.load_root()
        keys = [_parse_card(c) for c in cards]
        now = datetime.now(UTC)
        current = trusted.key_set
        try:
            new = (
                current.rotated(keys, threshold, now=now, valid_for=timedelta(days=days))
                if current is not None
                else UpdateKeySet(
                    household_id=membership.household_id,
                    version=1,
                    threshold=threshold,
                    keys=keys,
                    issued_at=now,
                    expires_at=now + timedelta(days=days),
                )
            )
        except ValidationError as exc:
            raise HearthError(f"not a valid key set: {exc.errors()[0]['msg']}") from None
        envelope = sign_key_set(new, root.key)
        trusted.update_key_set(envelope)
        store.save_key_set(envelope)
        console_err.print(
            f"signed update key set version {new.version}; agents hand it on with the next pack"
        )
    key_set = trusted.key_set
    if key_set is None:
        console_err.print(
            "no update key set yet: `hearth household update-key` on each holder, then list them here"
        )
        return
    table = Table(
        "key id",
        "holder",
        title=f"update keys v{key_set.version}: {key_set.threshold} of {len(key_set.keys)}",
    )
    for key in key_set.keys:
        table.add_row(key.keyid[:16], key.name)
    console.print(table)
    console.print(f"valid until {key_set.expires_at:%Y-%m-%d}; {len(key_set.revoked)} key(s) revoked")
