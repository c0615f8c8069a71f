"""Joining the household from Home Assistant: the broker's address and the setup code that
`hearth household invite` shows on the hub (SPAKE2: the code authenticates the hub end to end, so a
plain or unauthenticated-TLS pairing connection is enough). One entry per household.

A zeroconf advert is unauthenticated: anyone on the LAN can announce "this household's broker is now
there". A household on mqtts:// has its broker CA pinned at pairing, so an announced mqtts:// address is
taken only once the broker there proves itself with that CA (and never a plain mqtt:// one instead). A
plain mqtt:// broker cannot prove anything (a relay carries the household's signed presence as well as
the real one), so the move is only offered, with both addresses shown, and taken if the user confirms.

Checks that connect as this member (reconfigure, a confirmed move) stop the entry's own connection for
the time of the check: one member per state directory (`MeshMember` holds its lock), or the two would
reuse the membership's message counters.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import voluptuous as vol
from edge_agent.client import TASKS
from edge_agent.errors import HearthError, NetworkError
from edge_agent.mesh import (
    AdvertisementError,
    BrokerPki,
    HouseholdAdvert,
    HouseholdState,
    MeshMember,
    MqttClient,
    PairingError,
    WrongCodeError,
    broker_host_port,
    join_household,
    new_session,
    presence_household,
    validate_code,
)
from homeassistant.config_entries import ConfigEntry, ConfigEntryState, ConfigFlow, ConfigFlowResult
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo

from .const import (
    CONF_BROKER,
    CONF_CODE,
    CONF_HOUSEHOLD,
    CONF_NAME,
    DEFAULT_BROKER,
    DEFAULT_NAME,
    DOMAIN,
    PAIR_OPEN_TOPIC,
    PAIR_TIMEOUT_S,
    PROFILE,
    STATE_ROOT,
    state_dir,
)

_LOGGER = logging.getLogger(__name__)
DISCOVERY_CHECK_S = 10.0
"""How long an advertised new broker address has to carry this household's presence."""


def _schema(broker: str, name: str) -> vol.Schema:
    return vol.Schema(
        {
            vol.Required(CONF_BROKER, default=broker): str,
            vol.Required(CONF_CODE): str,
            vol.Required(CONF_NAME, default=name): str,
        }
    )


Move = Literal["verify", "confirm", "ignore"]


def broker_move(current: str, announced: str, pinned_ca: bool) -> Move:
    """What an advert naming another broker address for a known household may do: "verify" (mqtts://
    with the household's broker CA pinned: the broker there must prove itself with it), "confirm" (a
    plain mqtt:// household: only the user can say the new address is theirs), "ignore" (a downgrade
    from mqtts:// to mqtt://, or mqtts:// without a pinned CA to check it against)."""
    if announced.startswith("mqtts://"):
        if pinned_ca:
            return "verify"
        return "ignore" if current.startswith("mqtts://") else "confirm"
    return "ignore" if current.startswith("mqtts://") else "confirm"


def _pairing_tls(broker: str) -> Any:
    """Encrypted, not authenticated (see the module docstring); None for mqtt://."""
    if not broker.startswith("mqtts://"):
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class HearthConfigFlow(ConfigFlow, domain=DOMAIN):
    """Pair with the household's hub; pair again when the membership is revoked or expired (reauth);
    point at another broker address (reconfigure)."""

    VERSION = 1
    MINOR_VERSION = 2
    _discovered: tuple[str, str] = (DEFAULT_BROKER, "")
    _moving: tuple[str, str] = ("", "")
    """(entry id, announced broker) of a plain-MQTT household's move awaiting the user's confirmation."""
    """1.2: the state directory follows from the household id (no absolute path in the entry)."""

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        broker = user_input[CONF_BROKER] if user_input else DEFAULT_BROKER
        name = user_input[CONF_NAME] if user_input else DEFAULT_NAME
        errors, placeholders, paired = await self._try_pair(user_input)
        if paired is not None:
            household, staging, broker = paired
            await self.async_set_unique_id(household)
            if any(e.unique_id == household for e in self._async_current_entries(include_ignore=False)):
                await self._discard(staging)  # this household's directory belongs to its entry
                return self.async_abort(reason="already_configured")
            await self._keep(staging, household)
            return self.async_create_entry(
                title=f"Household {household}", data={CONF_BROKER: broker, CONF_HOUSEHOLD: household}
            )
        return self.async_show_form(step_id="user", data_schema=_schema(broker, name), errors=errors,
                                    description_placeholders=placeholders)  # fmt: skip

    # -- discovery -------------------------------------------------------------------------------------

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        """A hub advertises its household (`_hearth._tcp.local.`: household id, broker URL). Known
        household: its broker address is updated, but only once this household's own devices are
        heard through the new address (anyone on the LAN can send an advert)."""
        try:
            advert = HouseholdAdvert.parse(discovery_info.properties)
        except AdvertisementError as exc:
            _LOGGER.debug("ignored a zeroconf advert that is not a Hearth household's: %s", exc)
            return self.async_abort(reason="not_hearth")
        await self.async_set_unique_id(advert.hh)
        entry = next((e for e in self._async_current_entries() if e.unique_id == advert.hh), None)
        if entry is not None:
            current = str(entry.data.get(CONF_BROKER, ""))
            if advert.broker == current:
                return self.async_abort(reason="already_configured")
            home = state_dir(self.hass, entry.data[CONF_HOUSEHOLD])
            pinned = await self.hass.async_add_executor_job(lambda: BrokerPki(home).ca_cert_path.is_file())
            move = broker_move(current, advert.broker, pinned)
            if move == "verify" and await _broker_proves_itself(self.hass, home, advert.broker):
                _LOGGER.info("the household %s moved to %s (zeroconf; its broker CA checked)", advert.hh,
                             advert.broker)  # fmt: skip
                self._abort_if_unique_id_configured(updates={CONF_BROKER: advert.broker})
            if move == "confirm":
                self._moving = (entry.entry_id, advert.broker)
                self.context["title_placeholders"] = {"name": f"{entry.title}: {advert.broker}"}
                return await self.async_step_broker_moved()
            if move == "ignore":
                _LOGGER.warning("ignored an advert moving the household %s from %s to %s: not a broker its "
                                "pinned CA can check", advert.hh, current, advert.broker)  # fmt: skip
            return self.async_abort(reason="already_configured")
        self._discovered = (advert.broker, advert.name)
        self.context["title_placeholders"] = {"name": advert.name}
        return await self.async_step_discovery_confirm()

    async def async_step_broker_moved(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """A plain-MQTT household's broker is announced elsewhere: moved only if the user confirms (and
        the household's own devices are then heard there)."""
        entry_id, broker = self._moving
        entry = self.hass.config_entries.async_get_entry(entry_id)
        if entry is None:
            return self.async_abort(reason="already_configured")
        errors: dict[str, str] = {}
        if user_input is not None:
            household = entry.data[CONF_HOUSEHOLD]
            if await self._while_paused(entry, lambda: self._household_heard(household, broker)):
                _LOGGER.info(
                    "the household %s moved to %s (zeroconf, confirmed by the user)", household, broker
                )
                self.hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_BROKER: broker})
                self.hass.config_entries.async_schedule_reload(entry.entry_id)
                return self.async_abort(reason="broker_moved")
            errors["base"] = "not_heard"
        placeholders = {"household": entry.title, "old": str(entry.data.get(CONF_BROKER)), "new": broker}
        return self.async_show_form(step_id="broker_moved", data_schema=vol.Schema({}), errors=errors,
                                    description_placeholders=placeholders)  # fmt: skip

    async def _while_paused(self, entry: ConfigEntry, check: Callable[[], Awaitable[bool]]) -> bool:
        """``check`` (which connects as this member) with the entry's own connection stopped meanwhile:
        one member per state directory. True: the caller updates and reloads the entry; False: it is
        started again as it was."""
        loaded = entry.state is ConfigEntryState.LOADED
        if loaded:
            await self.hass.config_entries.async_unload(entry.entry_id)
        ok = False
        try:
            ok = await check()
        finally:
            if loaded and not ok:
                await self.hass.config_entries.async_setup(entry.entry_id)
        return ok

    async def async_step_mqtt(self, discovery_info: MqttServiceInfo) -> ConfigFlowResult:
        """Home Assistant's MQTT broker carries a household: a device's (encrypted) presence under
        hearth/<household>/…, or a hub's open invitation. The broker address is Home Assistant's own."""
        broker = self._mqtt_broker()
        if broker is None:
            return self.async_abort(reason="not_hearth")
        if discovery_info.topic == PAIR_OPEN_TOPIC:
            if not discovery_info.payload:  # the invitation closed
                return self.async_abort(reason="invitation_closed")
            await self.async_set_unique_id(f"invitation-{broker}")
            self._abort_if_unique_id_configured()
            self._discovered = (broker, "a hub's invitation")
            self.context["title_placeholders"] = {"name": "a hub's invitation"}
            return await self.async_step_discovery_confirm()
        household = presence_household(discovery_info.topic)
        if household is None:
            return self.async_abort(reason="not_hearth")
        await self.async_set_unique_id(household)
        self._abort_if_unique_id_configured()
        self._discovered = (broker, f"household {household}")
        self.context["title_placeholders"] = {"name": f"household {household}"}
        return await self.async_step_discovery_confirm()

    async def async_step_discovery_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Join a discovered household: its broker is known; the setup code is still needed (from
        `hearth household invite --class hub` on the hub)."""
        broker, name = self._discovered
        if user_input is not None:
            user_input = {**user_input, CONF_BROKER: broker}
        errors, placeholders, paired = await self._try_pair(user_input)
        if paired is not None:
            household, staging, broker = paired
            await self.async_set_unique_id(household, raise_on_progress=False)
            if any(e.unique_id == household for e in self._async_current_entries(include_ignore=False)):
                await self._discard(staging)
                return self.async_abort(reason="already_configured")
            await self._keep(staging, household)
            return self.async_create_entry(
                title=f"Household {household}", data={CONF_BROKER: broker, CONF_HOUSEHOLD: household}
            )
        schema = vol.Schema(
            {vol.Required(CONF_CODE): str, vol.Required(CONF_NAME, default=DEFAULT_NAME): str}
        )
        shown = placeholders | {"name": name, "broker": broker}
        return self.async_show_form(step_id="discovery_confirm", data_schema=schema, errors=errors,
                                    description_placeholders=shown)  # fmt: skip

    def _mqtt_broker(self) -> str | None:
        """Home Assistant's MQTT broker as a URL for the mesh (mqtts:// when it uses TLS)."""
        for entry in self.hass.config_entries.async_entries("mqtt"):
            host, port = entry.data.get("broker"), entry.data.get("port", 1883)
            if host:
                tls = bool(entry.data.get("certificate")) or int(port) == 8883
                return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
        return None

    async def _household_heard(self, household: str, broker: str) -> bool:
        """Whether this household's devices are heard through ``broker`` (signed presence within a few
        seconds), connecting as the member this entry is."""
        try:
            member = await self.hass.async_add_executor_job(
                MeshMember, state_dir(self.hass, household), broker
            )
            async with member:
                return await member.endpoint.wait_until(lambda: bool(member.peers()), DISCOVERY_CHECK_S)
        except (HearthError, OSError) as exc:
            _LOGGER.info("ignored the advertised broker %s for household %s: %s", broker, household, exc)
            return False

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        """The membership was revoked, expired or lost: pair again with a new setup code."""
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        entry = self._get_reauth_entry()
        broker = user_input[CONF_BROKER] if user_input else entry.data[CONF_BROKER]
        errors, placeholders, paired = await self._try_pair(user_input)
        if paired is not None:
            household, staging, broker = paired
            if household != entry.unique_id:  # another household's hub answered
                await self._discard(staging)
                return self.async_abort(reason="wrong_household")
            await self._keep(staging, household)
            return self.async_update_reload_and_abort(entry, data_updates={CONF_BROKER: broker})
        return self.async_show_form(step_id="reauth_confirm", data_schema=_schema(broker, DEFAULT_NAME),
                                    errors=errors, description_placeholders=placeholders)  # fmt: skip

    async def async_step_reconfigure(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Another address for the household's broker (same membership): checked by connecting."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        placeholders = {"error": ""}
        if user_input is not None:
            broker = user_input[CONF_BROKER].strip()
            if not broker.startswith(("mqtt://", "mqtts://")):
                errors[CONF_BROKER] = "invalid_broker"
            else:
                home = state_dir(self.hass, entry.data[CONF_HOUSEHOLD])

                async def connects() -> bool:
                    try:
                        await _check_connection(self.hass, home, broker)
                    except (NetworkError, OSError, HearthError) as exc:
                        errors["base"] = "cannot_connect"
                        placeholders["error"] = str(exc)
                        return False
                    return True

                if await self._while_paused(entry, connects):
                    return self.async_update_reload_and_abort(entry, data_updates={CONF_BROKER: broker})
        schema = vol.Schema({vol.Required(CONF_BROKER, default=entry.data[CONF_BROKER]): str})
        return self.async_show_form(step_id="reconfigure", data_schema=schema, errors=errors,
                                    description_placeholders=placeholders)  # fmt: skip

    async def _try_pair(
        self, user_input: dict[str, Any] | None
    ) -> tuple[dict[str, str], dict[str, str], tuple[str, Path, str] | None]:
        """(errors, placeholders, (household, staging dir, broker) once paired)."""
        errors: dict[str, str] = {}
        placeholders = {"error": ""}
        if user_input is None:
            return errors, placeholders, None
        broker, code = user_input[CONF_BROKER].strip(), user_input[CONF_CODE].strip()
        name = user_input.get(CONF_NAME, DEFAULT_NAME).strip() or DEFAULT_NAME
        if not broker.startswith(("mqtt://", "mqtts://")):
            errors[CONF_BROKER] = "invalid_broker"
            return errors, placeholders, None
        try:
            validate_code(code)
        except PairingError:
            errors[CONF_CODE] = "invalid_code"
            return errors, placeholders, None
        try:
            household, staging = await self._pair(broker, code, name)
        except WrongCodeError:
            errors[CONF_CODE] = "wrong_code"
        except TimeoutError:
            errors["base"] = "no_invitation"
        except (NetworkError, OSError) as exc:
            errors["base"] = "cannot_connect"
            placeholders["error"] = str(exc)
        except HearthError as exc:
            errors["base"] = "pairing_failed"
            placeholders["error"] = str(exc)
        else:
            return errors, placeholders, (household, staging, broker)
        return errors, placeholders, None

    def _root(self) -> Path:
        return Path(self.hass.config.path(".storage", STATE_ROOT))

    async def _pair(self, broker: str, code: str, name: str) -> tuple[str, Path]:
        """Pair in a fresh directory (removed again if pairing fails)."""
        staging = self._root() / f"pairing-{secrets.token_hex(4)}"
        state = await self.hass.async_add_executor_job(_fresh_state, staging)
        host, port = broker_host_port(broker)
        session = new_session()
        try:
            async with MqttClient(host, port, client_id=session, tls=_pairing_tls(broker)) as link:
                welcome = await join_household(
                    link, state, code, session=session, name=name, profile=PROFILE,
                    requests=list(TASKS), serves=[], timeout=PAIR_TIMEOUT_S,
                )  # fmt: skip
        except BaseException:
            await self._discard(staging)
            raise
        return welcome.certificate.household_id, staging

    async def _keep(self, staging: Path, household: str) -> Path:
        """The paired directory becomes the household's (replacing a revoked membership's)."""
        final = state_dir(self.hass, household)
        await self.hass.async_add_executor_job(_replace, staging, final)
        return final

    async def _discard(self, staging: Path) -> None:
        await self.hass.async_add_executor_job(shutil.rmtree, staging, True)


async def _broker_proves_itself(hass: Any, home: Path, broker: str) -> bool:
    """Whether the mqtts:// broker at ``broker`` presents a certificate from the household's pinned
    broker CA for that address, and takes this member's client certificate. Nothing of the membership's
    state is used (a plain MQTT session; the entry's own connection runs on)."""
    host, port = broker_host_port(broker)
    try:
        tls = await hass.async_add_executor_job(lambda: BrokerPki(home).tls_context())
        device = await hass.async_add_executor_job(lambda: HouseholdState(home).load().certificate.device_id)
        async with asyncio.timeout(DISCOVERY_CHECK_S):
            async with MqttClient(host, port, client_id=f"{device}-{secrets.token_hex(4)}", tls=tls):
                return True
    except (HearthError, OSError, TimeoutError) as exc:
        _LOGGER.info("ignored the advertised broker %s: it did not prove itself with the household's "
                     "broker CA: %s", broker, exc)  # fmt: skip
        return False


async def _check_connection(hass: Any, home: Path, broker: str) -> None:
    member = await hass.async_add_executor_job(MeshMember, home, broker)
    async with member:
        pass


def _fresh_state(directory: Path) -> HouseholdState:
    directory.mkdir(parents=True, mode=0o700)
    return HouseholdState(directory)  # creates this member's keys (in the executor: file writes)


def _replace(staging: Path, final: Path) -> None:
    if final.exists():  # an earlier pairing with this household (its entry was removed)
        shutil.rmtree(final)
    staging.rename(final)
