"""The agent → Home Assistant bridge: a command an appliance hears or is typed goes to Home Assistant's
Assist (its `conversation.process` action), so a fridge panel controls the home the way a voice
satellite would, and says what Home Assistant answered.

It talks to Home Assistant's REST API through homeassistant-api's async client (`AsyncClient`; the
README's ``Client(..., use_async=True)`` raises TypeError in 6.1.0). That package is an optional extra
(`pip install 'hearth-edge[ha]'`): GPL-3.0-or-later, and its HTTP stack (niquests) installs
urllib3-future, which takes over the venv's top-level ``urllib3``. So it is imported only when a bridge
opens: the base install and the agent never load it.

Errors name what was wrong: not installed, Home Assistant unreachable, token rejected, command refused.
The access token is never logged, printed or put in an error.
"""

from __future__ import annotations

import enum
import logging
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import HomeAssistantSection
from edge_agent.errors import ConfigError, HearthError, InvalidRequestError, NetworkError

log = logging.getLogger(__name__)

__all__ = [
    "BridgeError",
    "BridgeNotInstalledError",
    "BridgeReply",
    "BridgeState",
    "BridgeTarget",
    "HomeAssistantBridge",
    "HomeAssistantRefusedError",
    "HomeAssistantUnreachableError",
    "TokenRejectedError",
]

INSTALL_HINT = "pip install 'hearth-edge[ha]'"
MAX_TEXT = 2000  # characters of one command: a sentence or two, not a document
TOKEN = re.compile(r"[\x21-\x7e]{8,4096}")  # one line of printable ASCII, as HA's JWTs are


class BridgeError(HearthError):
    """The bridge to Home Assistant failed; the message says what to fix."""


class BridgeNotInstalledError(BridgeError):
    """The `ha` extra (homeassistant-api) is not installed here."""


class HomeAssistantUnreachableError(BridgeError, NetworkError):
    """No answer from Home Assistant: refused, unresolvable, timed out, or TLS verification failed."""


class TokenRejectedError(BridgeError):
    """Home Assistant answered 401: the access token is wrong, revoked or expired."""


class HomeAssistantRefusedError(BridgeError):
    """Home Assistant answered with an error status, or with something that is not its API."""


class BridgeState(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


class BridgeTarget(BaseModel):
    """An entity, area or device Home Assistant's answer names."""

    model_config = ConfigDict(extra="ignore")
    name: str = ""
    type: str = ""
    id: str = ""


class BridgeReply(BaseModel):
    """What Home Assistant's Assist answered (its ConversationResult, flattened)."""

    speech: str
    """What Assist says back, e.g. "Turned on the light" (plain text)."""
    response_type: str
    """``action_done``, ``query_answer`` or ``error`` (then ``error_code`` says why)."""
    conversation_id: str | None = None
    """Pass it to the next command to continue the conversation (LLM agents keep context)."""
    language: str | None = None
    continue_conversation: bool = False
    """Assist asked something back and expects an answer."""
    error_code: str | None = None
    """For ``error``: no_intent_match, no_valid_targets, failed_to_handle, unknown."""
    targets: list[BridgeTarget] = Field(default_factory=list)
    success: list[BridgeTarget] = Field(default_factory=list)
    failed: list[BridgeTarget] = Field(default_factory=list)
    changed: dict[str, str] = Field(default_factory=dict)
    """Entity id → state, for the states that changed while Home Assistant handled the command."""
    raw: dict[str, Any] = Field(default_factory=dict)
    """The conversation result exactly as Home Assistant sent it."""


class _Speech(BaseModel):
    model_config = ConfigDict(extra="ignore")
    speech: str = ""


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")
    speech: dict[str, _Speech] = Field(default_factory=dict)
    response_type: str
    language: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class _Result(BaseModel):
    """Home Assistant's `ConversationResult.as_dict()`: input from the network, so validated."""

    model_config = ConfigDict(extra="ignore")
    response: _Response
    conversation_id: str | None = None
    continue_conversation: bool = False


def _targets(data: dict[str, Any], key: str) -> list[BridgeTarget]:
    items = data.get(key)
    if not isinstance(items, list):
        return []
    return [BridgeTarget.model_validate(i) for i in items if isinstance(i, dict)]


def reply_from(result: Any, changed: dict[str, str]) -> BridgeReply:
    """A `BridgeReply` from Home Assistant's conversation result (raises if it is not one)."""
    parsed = _Result.model_validate(result)
    resp = parsed.response
    speech = resp.speech.get("plain") or resp.speech.get("ssml") or _Speech()
    code = resp.data.get("code") if resp.response_type == "error" else None
    return BridgeReply(
        speech=speech.speech, response_type=resp.response_type, conversation_id=parsed.conversation_id,
        language=resp.language, continue_conversation=parsed.continue_conversation,
        error_code=str(code) if code is not None else None, targets=_targets(resp.data, "targets"),
        success=_targets(resp.data, "success"), failed=_targets(resp.data, "failed"), changed=changed,
        raw=dict(result),
    )  # fmt: skip


def _network_reason(exc: BaseException) -> str:
    """A short cause from niquests' nested connection error (its text wraps several layers)."""
    text = str(exc)
    if "Errno 111" in text or "Connection refused" in text or "Connect call failed" in text:
        return "connection refused (is Home Assistant running, and is the port right?)"
    if found := re.search(r"Failed to resolve '([^']+)'", text):
        return f"cannot resolve the host name {found[1]!r}"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ("its TLS certificate is not trusted (for a self-signed certificate on the LAN set "
                "[home_assistant] verify_tls = false)")  # fmt: skip
    if found := re.search(r"\[Errno -?\d+\] ([^\"'()\]]+)", text):
        return found[1].strip().rstrip(":")
    return text[:300]


def check_command(text: str) -> str:
    """The command, stripped; an empty or overlong one is the caller's error (before any network)."""
    text = text.strip()
    if not text:
        raise InvalidRequestError("nothing to say to Home Assistant: the command is empty")
    if len(text) > MAX_TEXT:
        raise InvalidRequestError(f"the command is {len(text)} characters; at most {MAX_TEXT}")
    return text


class HomeAssistantBridge:
    """An open session with Home Assistant's REST API; `converse` hands it one command.

    An async context manager with a state enum; it runs nothing in the background (each command is
    one request over the kept-alive connection), so it holds no task group.
    """

    def __init__(self, settings: HomeAssistantSection) -> None:
        self.settings = settings
        self.state = BridgeState.UNOPENED
        if settings.url is None:
            raise ConfigError(
                '[home_assistant] url is not set: add url = "http://homeassistant.local:8123" to the '
                "agent config, or set HEARTH_HOME_ASSISTANT__URL"
            )
        self.url: str = settings.url
        self.api_url = self.url if self.url.endswith("/api") else f"{self.url}/api"
        self._client: Any = None
        self._token_source = ""

    def _token(self) -> tuple[str, str]:
        """(token, where it came from); the token itself never reaches a log or a message."""
        cfg = self.settings
        if cfg.token_file is not None:
            path = cfg.token_file.expanduser()
            where = f"[home_assistant] token_file {path}"
            try:
                token = path.read_text(encoding="utf-8").strip()
                mode = path.stat().st_mode
            except FileNotFoundError:
                raise ConfigError(f"{where}: no such file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}: cannot read it ({exc.__class__.__name__})") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("%s can be read by other users of this machine: chmod 600 it", path)
        elif cfg.token is not None:
            token, where = cfg.token.get_secret_value().strip(), "[home_assistant] token"
        else:
            raise ConfigError(
                "no Home Assistant access token: make a long-lived one (Home Assistant: your profile → "
                "Security → Long-lived access tokens), save it to a file and set [home_assistant] "
                "token_file (or HEARTH_HOME_ASSISTANT__TOKEN_FILE)"
            )
        if not TOKEN.fullmatch(token):
            raise ConfigError(f"{where}: does not hold an access token (one line of printable "
                              "characters expected)")  # fmt: skip
        return token, where

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not BridgeState.UNOPENED:
            raise RuntimeError(f"this bridge is {self.state.value}; make a new one")
        token, self._token_source = self._token()
        try:
            from homeassistant_api import AsyncClient
        except ImportError as exc:
            raise BridgeNotInstalledError(
                f"the Home Assistant bridge needs the `ha` extra: {INSTALL_HINT} "
                f"({exc.name or 'homeassistant_api'} is not installed)"
            ) from None
        self.state = BridgeState.RUNNING
        if not self.settings.verify_tls and self.url.startswith("https:"):
            # said once here, not on every request by urllib3(-future)
            log.warning(
                "not verifying the TLS certificate of %s ([home_assistant] verify_tls = false)", self.url
            )
            warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        client = AsyncClient(
            self.api_url, token, verify_ssl=self.settings.verify_tls,
            global_request_kwargs={"timeout": self.settings.timeout_s},
        )  # fmt: skip
        try:
            with self._errors("connecting"):
                await client.__aenter__()  # opens the session and checks GET /api/ (token included)
        except BaseException:
            self.state = BridgeState.CLOSED
            await client.__aexit__(None, None, None)
            raise
        self._client = client
        log.debug("connected to Home Assistant at %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.state is BridgeState.CLOSED:
            return
        self.state = BridgeState.CLOSED
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)

    # -- commands -------------------------------------------------------------------------------------

    async def converse(self, text: str, conversation_id: str | None = None) -> BridgeReply:
        """Hand ``text`` to Assist (HA's `conversation.process` with its response) and return its answer."""
        if self.state is not BridgeState.RUNNING:
            raise RuntimeError(f"this bridge is {self.state.value}, not running")
        data: dict[str, Any] = {"text": check_command(text)}
        for key, value in (("language", self.settings.language), ("agent_id", self.settings.agent_id),
                           ("conversation_id", conversation_id)):  # fmt: skip
            if value is not None:
                data[key] = value
        with self._errors("asking Assist"):
            states, result = await self._client.trigger_service_with_response(
                "conversation", "process", **data
            )
        try:
            return reply_from(result, {str(s.entity_id): str(s.state) for s in states})
        except ValidationError as exc:
            raise HomeAssistantRefusedError(
                f"Home Assistant at {self.url} answered conversation.process with something that is not "
                f"a conversation result ({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
            ) from None

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """homeassistant-api's and niquests' exceptions as bridge errors that say what to fix."""
        from homeassistant_api import errors as api
        from niquests import exceptions as http

        where = f"Home Assistant at {self.url}"
        try:
            yield
        except api.UnauthorizedError:
            raise TokenRejectedError(
                f"{where} rejected the access token from {self._token_source} (HTTP 401 while {doing}): "
                "make a new long-lived token (your profile → Security) and save it there"
            ) from None
        except (api.RequestTimeoutError, http.Timeout):
            raise HomeAssistantUnreachableError(
                f"{where} did not answer within {self.settings.timeout_s:g} s while {doing} "
                "([home_assistant] timeout_s)"
            ) from None
        except http.RequestException as exc:
            raise HomeAssistantUnreachableError(
                f"cannot reach {where} while {doing}: {_network_reason(exc)}"
            ) from None
        except api.EndpointNotFoundError:
            raise HomeAssistantRefusedError(
                f"{where} has no such API (HTTP 404 while {doing}): is the url Home Assistant's, and is "
                "its `api:` (or default_config:) enabled?"
            ) from None
        except api.RequestError as exc:
            raise HomeAssistantRefusedError(f"{where} refused the request (HTTP 400 while {doing}): "
                                            f"{exc}") from None  # fmt: skip
        except api.InternalServerError:
            raise HomeAssistantRefusedError(
                f"{where} failed while {doing} (HTTP 5xx): see Home Assistant's log"
            ) from None
        except (api.MalformedDataError, api.ProcessorNotFoundError) as exc:
            raise HomeAssistantRefusedError(
                f"{where} does not look like Home Assistant's API while {doing}: {exc}"
            ) from None
        except api.HomeassistantAPIError as exc:  # 405, unexpected status codes
            raise HomeAssistantRefusedError(f"{where} refused the request while {doing}: {exc}") from None
        except TypeError as exc:  # the client's "Expected dict response, got list" and kin
            if not str(exc).startswith("Expected "):
                raise
            raise HomeAssistantRefusedError(
                f"{where} does not look like Home Assistant's API while {doing}: {exc}"
            ) from None
