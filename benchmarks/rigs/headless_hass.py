"""A real, headless Home Assistant (`hass`) for end-to-end tests, offline: onboarding is pre-seeded and
the user comes from `hass --script auth` (HA's own onboarding would add integrations that call the
internet), the configuration names only local integrations, and `--skip-pip` keeps it from installing
anything. It listens on a free loopback port and is stopped by its PID. Talk to it with `HassClient`
(REST + WebSocket over aiohttp, which Home Assistant's venv has)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from benchmarks.rigs.brokers import free_port
from edge_agent import processes

REPO = Path(__file__).resolve().parents[2]
HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"
"""Home Assistant's venv (make ha-venv): HA 2025.4.4 on Python 3.13.0, the mesh library installed."""

LOCAL_INTEGRATIONS: Mapping[str, Mapping[str, Any] | None] = {"frontend": None, "config": None,
                                                              "conversation": None}  # fmt: skip
"""The default configuration: the UI, its config panels and Assist. No `default_config` (it brings
integrations that reach the internet: met, radio_browser, cloud, analytics, ...)."""

ONBOARDED = {"version": 4, "minor_version": 1, "key": "onboarding",
             "data": {"done": ["user", "core_config", "analytics", "integration"]}}  # fmt: skip
"""`.storage/onboarding` with every step done: the onboarding views (and what they set up) stay off."""

T = TypeVar("T")


class HassError(RuntimeError):
    """Home Assistant refused a request (the message names the request and HA's answer)."""


@dataclass
class HeadlessHass:
    """A running `hass`: where it listens, its files, and a long-lived token for ``user``."""

    config_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    username: str
    password: str
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.config_dir / "home-assistant.log"

    def client(self) -> HassClient:
        return HassClient(self.url, self.token)

    def log_tail(self, lines: int = 60) -> str:
        """The end of its log (for failure messages)."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def write_config(config_dir: Path, port: int, integrations: Mapping[str, Mapping[str, Any] | None]) -> None:
    """configuration.yaml (fixed location and time zone: nothing to detect online) and onboarding done."""
    lines = [
        "homeassistant:",
        "  name: Hearth E2E",
        "  latitude: 52.37",
        "  longitude: 4.89",
        "  elevation: 0",
        "  unit_system: metric",
        "  time_zone: UTC",
        "  country: NL",
        "  currency: EUR",
        "  language: en",
        f"http: {json.dumps({'server_host': '127.0.0.1', 'server_port': port})}",
    ]
    # JSON is YAML: each integration's options as one flow mapping.
    lines += [
        f"{name}:" + (f" {json.dumps(dict(opts))}" if opts else "") for name, opts in integrations.items()
    ]
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text("\n".join(lines) + "\n")
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / "onboarding").write_text(json.dumps(ONBOARDED))


def add_user(config_dir: Path, username: str, password: str, python: Path = HA_PYTHON) -> None:
    """A local user, the way an administrator adds one without the UI (`hass --script auth add`)."""
    args = [str(python), "-m", "homeassistant", "--script", "auth", "-c", str(config_dir),
            "add", username, password]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or "Auth created" not in done.stdout:
        raise HassError(f"`hass --script auth add {username}` failed:\n{done.stdout}{done.stderr}")


def install_custom_component(config_dir: Path, source: Path) -> None:
    """``source`` (a custom_components/<domain> folder) linked into the config dir, as HACS would copy it."""
    target = config_dir / "custom_components" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source.resolve(), target_is_directory=True)


def http_up(url: str) -> bool:
    """Whether Home Assistant's HTTP server answers (the login page's providers list needs no token,
    and probing it leaves no failed-login notification behind)."""
    try:
        with urllib.request.urlopen(f"{url}/auth/providers", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Check ``condition`` until it holds (a process coming up has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def run_hass(
    config_dir: Path,
    *,
    custom_components: Sequence[Path] = (),
    integrations: Mapping[str, Mapping[str, Any] | None] = LOCAL_INTEGRATIONS,
    username: str = "hearth",
    password: str = "hearth-e2e-password",
    python: Path = HA_PYTHON,
    timeout: float = 120.0,
) -> Iterator[HeadlessHass]:
    """Configure, start and log in to a `hass`; yields once its core is RUNNING. Stopped by its PID."""
    if not python.exists():
        raise HassError(f"Home Assistant's venv is missing ({python}): run `make ha-venv` first")
    port = free_port()
    write_config(config_dir, port, integrations)
    for component in custom_components:
        install_custom_component(config_dir, component)
    add_user(config_dir, username, password, python)
    args = [str(python), "-m", "homeassistant", "-c", str(config_dir), "--skip-pip",
            "--log-file", str(config_dir / "home-assistant.log")]  # fmt: skip
    with (config_dir / "hass.out").open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        hass = HeadlessHass(config_dir, port, proc, username, password)
        try:

            def up() -> bool:
                if proc.poll() is not None:
                    raise HassError(f"hass exited with {proc.returncode}:\n{hass.log_tail()}")
                return http_up(hass.url)

            wait_until(up, timeout, f"Home Assistant's HTTP server on port {port}")
            hass.token = asyncio.run(login(hass.url, username, password))
            wait_until(lambda: core_state(hass) == "RUNNING", timeout, "Home Assistant to start")
            yield hass
        finally:
            processes.stop(proc, timeout=30)  # SIGTERM: HA writes its .storage and stops its integrations


def core_state(hass: HeadlessHass) -> str:
    """`RUNNING` once every integration set up at start is done (GET /api/config)."""
    request = urllib.request.Request(
        f"{hass.url}/api/config", headers={"Authorization": f"Bearer {hass.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["state"])


async def login(url: str, username: str, password: str) -> str:
    """The login page's flow over REST (login_flow -> code -> token), then a long-lived token."""
    client_id = f"{url}/"
    async with aiohttp.ClientSession() as session:
        start = {
            "client_id": client_id,
            "handler": ["homeassistant", None],
            "redirect_uri": f"{url}/?auth_callback=1",
        }
        flow = await _json(session, "POST", f"{url}/auth/login_flow", "start the login flow", json=start)
        step = {"username": username, "password": password, "client_id": client_id}
        done = await _json(session, "POST", f"{url}/auth/login_flow/{flow['flow_id']}", "log in", json=step)
        if done.get("type") != "create_entry":
            raise HassError(f"login as {username!r} refused: {done}")
        form = {"grant_type": "authorization_code", "code": done["result"], "client_id": client_id}
        tokens = await _json(session, "POST", f"{url}/auth/token", "exchange the login code", data=form)
    async with HassClient(url, str(tokens["access_token"])) as api:
        token = await api.ws("auth/long_lived_access_token", client_name="hearth-e2e", lifespan=1)
    return str(token)


async def _json(session: aiohttp.ClientSession, method: str, url: str, what: str, **kwargs: Any) -> Any:
    """The JSON answer of one request (None if empty); HassError naming ``what`` on an HTTP error."""
    async with session.request(method, url, **kwargs) as response:
        text = await response.text()
        if response.status >= 400:
            raise HassError(f"{what}: HTTP {response.status}: {text}")
        return json.loads(text) if text else None


class HassClient:
    """One REST session and one authenticated WebSocket to a running Home Assistant."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HassClient:
        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"})
        try:
            self._ws = await self._session.ws_connect(f"{self.url}/api/websocket", max_msg_size=0)
            hello = await self._ws.receive_json()
            assert hello["type"] == "auth_required", hello
            await self._ws.send_json({"type": "auth", "access_token": self.token})
            auth = await self._ws.receive_json()
            if auth["type"] != "auth_ok":
                raise HassError(f"WebSocket authentication refused: {auth}")
        except BaseException:
            await self._session.close()
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            for item in m if isinstance(m := json.loads(message.data), list) else [m]:
                if item.get("type") == "event" and (queue := self._events.get(item["id"])) is not None:
                    queue.put_nowait(item["event"])
                elif (
                    future := self._pending.pop(item.get("id", -1), None)
                ) is not None and not future.done():
                    future.set_result(item)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HassError("the WebSocket closed"))

    async def _command(
        self, payload: dict[str, Any], events: asyncio.Queue[dict[str, Any]] | None = None
    ) -> tuple[int, Any]:
        """Send one command, return (its id, its result); ``events``: where a subscription's events go
        (registered before the command is sent, so none is missed)."""
        assert self._ws is not None, "use `async with HassClient(...)`"
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        if events is not None:
            self._events[ident] = events
        await self._ws.send_json({"id": ident, **payload})
        answer = await future
        if not answer.get("success", False):
            raise HassError(f"WebSocket {payload['type']} failed: {answer.get('error')}")
        return ident, answer.get("result")

    async def ws(self, command: str, **fields: Any) -> Any:
        """One WebSocket command's result."""
        _, result = await self._command({"type": command, **fields})
        return result

    async def rest(self, method: str, path: str, payload: Any = None) -> Any:
        assert self._session is not None, "use `async with HassClient(...)`"
        return await _json(self._session, method, f"{self.url}{path}", f"{method} {path}", json=payload)

    async def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in await self.ws("get_states")}

    async def entities(self) -> list[dict[str, Any]]:
        """The entity registry (platform, unique_id, device_id, entity_id, ...)."""
        return list(await self.ws("config/entity_registry/list"))

    async def devices(self) -> list[dict[str, Any]]:
        """The device registry (identifiers, name, model, via_device_id, ...)."""
        return list(await self.ws("config/device_registry/list"))

    async def config_flow(self, handler: str, *steps: Mapping[str, Any]) -> dict[str, Any]:
        """Start ``handler``'s config flow and answer its forms with ``steps``; the last result."""
        result: dict[str, Any] = await self.rest(
            "POST", "/api/config/config_entries/flow", {"handler": handler}
        )
        for step in steps:
            if result.get("type") != "form":
                raise HassError(f"{handler}'s config flow ended early: {result}")
            result = await self.rest(
                "POST", f"/api/config/config_entries/flow/{result['flow_id']}", dict(step)
            )
        return result

    async def converse(self, text: str, agent_id: str, language: str = "en") -> dict[str, Any]:
        """A conversation turn, as the Assist dialog sends it (`conversation/process`)."""
        return dict(await self.ws("conversation/process", text=text, agent_id=agent_id, language=language))

    async def wait_for_states(
        self, condition: Callable[[dict[str, dict[str, Any]]], Awaitable[T | None] | T | None], timeout: float
    ) -> T:
        """Wait until ``condition(states)`` (a function or a coroutine function) is truthy, re-checked on
        every state change; returns that value."""

        async def check(states: dict[str, dict[str, Any]]) -> T | None:
            found = condition(states)
            return await found if inspect.isawaitable(found) else found

        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ident, _ = await self._command({"type": "subscribe_events", "event_type": "state_changed"}, queue)
        try:
            states = await self.states()  # after subscribing: no change falls between the two
            async with asyncio.timeout(timeout):
                while not (found := await check(states)):
                    event = (await queue.get())["data"]
                    while True:  # apply every change queued so far, then check the latest view
                        if event["new_state"] is None:
                            states.pop(event["entity_id"], None)
                        else:
                            states[event["entity_id"]] = event["new_state"]
                        if queue.empty():
                            break
                        event = queue.get_nowait()["data"]
            return found
        finally:
            del self._events[ident]
            await self.ws("unsubscribe_events", subscription=ident)
