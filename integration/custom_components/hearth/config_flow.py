"""Joining the household from Home Assistant: the broker's address and the setup code that
`hearth household invite` shows on the hub (SPAKE2: the code authenticates the hub end to end, so a
plain or unauthenticated-TLS pairing connection is enough). One entry per household."""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

import voluptuous as vol
from edge_agent.errors import HearthError, NetworkError
from edge_agent.mesh.join import join_household
from edge_agent.mesh.pairing import PairingError, WrongCodeError, new_session, validate_code
from edge_agent.mesh.settings import broker_host_port
from edge_agent.mesh.state import HouseholdState
from edge_agent.mesh.transports.mqtt import MqttClient
from edge_agent.tasks import TASKS
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult

from .const import (
    CONF_BROKER,
    CONF_CODE,
    CONF_HOUSEHOLD,
    CONF_NAME,
    CONF_STATE_DIR,
    DEFAULT_BROKER,
    DEFAULT_NAME,
    DOMAIN,
    PAIR_TIMEOUT_S,
    PROFILE,
    STATE_ROOT,
)

_LOGGER = logging.getLogger(__name__)


def _schema(broker: str, name: str) -> vol.Schema:
    return vol.Schema(
        {
            vol.Required(CONF_BROKER, default=broker): str,
            vol.Required(CONF_CODE): str,
            vol.Required(CONF_NAME, default=name): str,
        }
    )


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
    """Pair with the household's hub."""

    VERSION = 1
    MINOR_VERSION = 1

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        broker, name = DEFAULT_BROKER, DEFAULT_NAME
        if user_input is not None:
            broker, name = user_input[CONF_BROKER].strip(), user_input[CONF_NAME].strip() or DEFAULT_NAME
            code = user_input[CONF_CODE].strip()
            if not broker.startswith(("mqtt://", "mqtts://")):
                errors[CONF_BROKER] = "invalid_broker"
            else:
                try:
                    validate_code(code)
                except PairingError:
                    errors[CONF_CODE] = "invalid_code"
            if not errors:
                try:
                    household, state_dir = await self._pair(broker, code, name)
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
                    await self.async_set_unique_id(household)
                    self._abort_if_unique_id_configured()
                    return self.async_create_entry(
                        title=f"Household {household}",
                        data={CONF_BROKER: broker, CONF_HOUSEHOLD: household, CONF_STATE_DIR: str(state_dir)},
                    )
        return self.async_show_form(
            step_id="user",
            data_schema=_schema(broker, name),
            errors=errors,
            description_placeholders={"error": placeholders.get("error", "")},
        )

    async def _pair(self, broker: str, code: str, name: str) -> tuple[str, Path]:
        """Pair in a fresh directory; once the household is known it becomes that household's."""
        root = Path(self.hass.config.path(".storage", STATE_ROOT))
        staging = root / f"pairing-{secrets.token_hex(4)}"
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
            await self.hass.async_add_executor_job(shutil.rmtree, staging, True)
            raise
        household = welcome.certificate.household_id
        final = root / household
        await self.hass.async_add_executor_job(_replace, staging, final)
        return household, final


def _fresh_state(directory: Path) -> HouseholdState:
    directory.mkdir(parents=True, mode=0o700)
    return HouseholdState(directory)  # creates this member's keys (in the executor: file writes)


def _replace(staging: Path, final: Path) -> None:
    if final.exists():  # an earlier pairing with this household (its entry was removed)
        shutil.rmtree(final)
    staging.rename(final)
