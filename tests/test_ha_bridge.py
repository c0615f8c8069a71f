"""The agent → Home Assistant bridge, against a real headless Home Assistant (2025.4.4, from .venv-ha).

A command goes through homeassistant-api's async client to HA's Assist (`conversation.process`), and the
test reads the entity's state back over REST: the light is really on. A wrong token and a Home Assistant
that is not running give exact, one-line errors. The `ha` extra lives in its own venv
(`make test-ha-bridge`: .venv-bridge); in the main venv the tests that need it are skipped, and the
ones about the base install (never imports the extra; says how to install it) run everywhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.rigs.brokers import free_port
from edge_agent.config import AgentConfig, HomeAssistantSection, load_config
from edge_agent.errors import ConfigError
from tests.support.cli import hearth

pytestmark = pytest.mark.slow  # a headless Home Assistant, `hearth` in subprocesses

HAS_EXTRA = importlib.util.find_spec("homeassistant_api") is not None
needs_extra = pytest.mark.skipif(
    not HAS_EXTRA,
    reason="the `ha` extra is not installed here: `make test-ha-bridge` runs these in .venv-bridge",
)
LIGHT = "input_boolean.kitchen_light"
HALL = "input_boolean.hall_light"  # exists, but is not exposed to Assist
# An input_boolean works offline; Assist acts only on entities exposed to it (lights are by default,
# helpers are not), so the fixture exposes the kitchen light the way the Settings → Voice assistants
# page does, over the WebSocket API.
INTEGRATIONS = {
    "api": None,
    "conversation": None,
    "input_boolean": {"kitchen_light": {"name": "Kitchen light"}, "hall_light": {"name": "Hall light"}},
}
# Imports a base install (no `ha` extra) must never make, even lazily, until a bridge opens.
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'homeassistant_api', 'niquests', 'urllib3', 'urllib3_future'}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
"""


# -- configuration (every venv) ----------------------------------------------------------------------


def test_config_section_validates_url_and_keeps_the_token_secret(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('[home_assistant]\nurl = "homeassistant.local:8123"\n')
    with pytest.raises(ConfigError) as err:
        load_config(toml, environ={})
    assert str(err.value) == (
        f"{toml}: home_assistant.url: must be an http:// or https:// URL of Home Assistant, e.g. "
        "http://homeassistant.local:8123 (got 'homeassistant.local:8123')"
    )
    toml.write_text('[home_assistant]\nurl = "https://ha.lan:8123/"\ntoken = "a.b.c"\ntoken_file = "/t"\n')
    with pytest.raises(ConfigError, match=r"home_assistant: set token or token_file, not both"):
        load_config(toml, environ={})
    cfg = load_config(
        None,
        environ={
            "HEARTH_HOME_ASSISTANT__URL": "https://ha.lan:8123/",
            "HEARTH_HOME_ASSISTANT__TOKEN": "s3cr3t.tok",
        },
    )
    ha = cfg.home_assistant
    assert ha.url == "https://ha.lan:8123" and ha.token is not None
    assert ha.token.get_secret_value() == "s3cr3t.tok"
    assert "s3cr3t" not in repr(cfg) + str(cfg) + cfg.model_dump_json()


def _run_blocked(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip


def test_base_install_never_imports_the_extra(hearth_env: dict[str, str]) -> None:
    code = (
        "import edge_agent.cli, edge_agent.hearth, edge_agent.ha_bridge\n"
        "from edge_agent.config import HomeAssistantSection\n"
        "edge_agent.ha_bridge.HomeAssistantBridge(HomeAssistantSection(url='http://ha:8123'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'homeassistant_api', 'niquests', 'urllib3', 'urllib3_future'}))\n"
    )
    done = _run_blocked(code, hearth_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_without_the_extra_the_error_says_how_to_install_it(
    tmp_path: Path, hearth_env: dict[str, str]
) -> None:
    token = tmp_path / "token"
    token.write_text("not-used-token\n")
    token.chmod(0o600)
    env = {**hearth_env, "HEARTH_HOME_ASSISTANT__URL": "http://127.0.0.1:1",
           "HEARTH_HOME_ASSISTANT__TOKEN_FILE": str(token)}  # fmt: skip
    done = _run_blocked(
        "sys.argv = ['hearth', 'ha', 'say', 'turn on the kitchen light']\n"
        "from edge_agent.cli import main\nmain()\n",
        env,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "error: the Home Assistant bridge needs the `ha` extra: pip install 'hearth-edge[ha]' "
        "(homeassistant_api is not installed)\n"
    )
    assert done.stdout == ""


def test_missing_url_or_token_is_a_config_error(tmp_path: Path, hearth_env: dict[str, str]) -> None:
    done = hearth("ha", "say", "turn on the kitchen light", env={**hearth_env, "COLUMNS": "1000"})
    assert done.returncode == 2
    assert done.stderr == (
        'error: [home_assistant] url is not set: add url = "http://homeassistant.local:8123" to the agent '
        "config, or set HEARTH_HOME_ASSISTANT__URL\n"
    )
    from edge_agent.ha_bridge import HomeAssistantBridge

    def opening(**fields: object) -> str:
        bridge = HomeAssistantBridge(
            HomeAssistantSection.model_validate({"url": "http://127.0.0.1:1", **fields})
        )
        with pytest.raises(ConfigError) as err:
            asyncio.run(bridge.__aenter__())
        return str(err.value)

    assert opening().startswith("no Home Assistant access token: make a long-lived one")
    missing = tmp_path / "nope"
    assert opening(token_file=missing) == f"[home_assistant] token_file {missing}: no such file"
    (tmp_path / "two-lines").write_text("abcdefghij\nklmnopqrst\n")
    assert opening(token_file=tmp_path / "two-lines") == (
        f"[home_assistant] token_file {tmp_path / 'two-lines'}: does not hold an access token (one line of "
        "printable characters expected)"
    )


# -- against a real Home Assistant (the `ha` extra) --------------------------------------------------


@dataclass
class Home:
    url: str
    token: str
    token_file: Path

    def state(self, entity_id: str) -> str:
        """Read back over HA's REST API (stdlib HTTP: independent of the client under test)."""
        req = urllib.request.Request(
            f"{self.url}/api/states/{entity_id}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.load(resp)["state"])

    def env(self, base: dict[str, str], token_file: Path | None = None) -> dict[str, str]:
        return {**base, "COLUMNS": "1000", "HEARTH_HOME_ASSISTANT__URL": self.url,
                "HEARTH_HOME_ASSISTANT__TOKEN_FILE": str(token_file or self.token_file)}  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    if not HAS_EXTRA:
        pytest.skip("the `ha` extra is not installed here")
    from benchmarks.rigs.headless_hass import run_hass

    root = tmp_path_factory.mktemp("ha-bridge")
    with run_hass(root / "hass", integrations=INTEGRATIONS) as hass:

        async def expose() -> None:
            async with hass.client() as api:
                await api.ws("homeassistant/expose_entity", assistants=["conversation"], entity_ids=[LIGHT],
                             should_expose=True)  # fmt: skip

        asyncio.run(expose())
        token_file = root / "ha.token"
        token_file.write_text(hass.token + "\n")
        token_file.chmod(0o600)
        yield Home(hass.url, hass.token, token_file)


@needs_extra
def test_say_turns_the_kitchen_light_on(home: Home, hearth_env: dict[str, str]) -> None:
    assert home.state(LIGHT) == "off"
    done = hearth("ha", "say", "turn on the kitchen light", env=home.env(hearth_env))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Turned on the switch\n"
    assert home.state(LIGHT) == "on"
    assert home.token not in done.stdout + done.stderr


@needs_extra
def test_bridge_converse_and_the_facade(home: Home, tmp_path: Path) -> None:
    from edge_agent.ha_bridge import HomeAssistantBridge
    from edge_agent.hearth import Hearth
    from edge_agent.models.selection import plan_for_profile
    from edge_agent.models.store import PackStore
    from edge_agent.profiles import load_profile

    cfg = AgentConfig.model_validate(
        {"agent": {"name": "fridge", "profile": "fridge-panel"},
         "home_assistant": {"url": home.url, "token_file": str(home.token_file), "language": "en"}}
    )  # fmt: skip

    async def go() -> None:
        async with HomeAssistantBridge(cfg.home_assistant) as bridge:
            reply = await bridge.converse("turn off the kitchen light")
        assert (reply.response_type, reply.speech, reply.language) == (
            "action_done",
            "Turned off the switch",
            "en",
        )
        assert [t.id for t in reply.success] == [LIGHT] and reply.failed == []
        assert reply.changed[LIGHT] == "off" and reply.conversation_id
        assert reply.raw["response"]["data"]["success"][0]["name"] == "Kitchen light"
        assert home.state(LIGHT) == "off"

        profile, store = load_profile("fridge-panel"), PackStore()
        plan = plan_for_profile(profile, [p.manifest for p in store.list()])
        async with Hearth(cfg, profile, store, plan, use_mesh=False, state_dir=tmp_path / "mesh") as agent:
            reply = await agent.ask_home_assistant("turn on the kitchen light")
            assert reply.speech == "Turned on the switch" and home.state(LIGHT) == "on"
            again = await agent.ask_home_assistant("turn off kitchen light", reply.conversation_id)
            assert again.response_type == "action_done" and home.state(LIGHT) == "off"

    asyncio.run(go())


@needs_extra
def test_json_reply_and_an_assist_error(home: Home, hearth_env: dict[str, str]) -> None:
    done = hearth("ha", "say", "--json", "turn on the kitchen light", env=home.env(hearth_env))
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["response_type"] == "action_done" and reply["changed"][LIGHT] == "on"
    assert reply["raw"]["response"]["speech"]["plain"]["speech"] == "Turned on the switch"
    # Assist understood, but may not touch an entity that is not exposed to it: its own words, exit 1.
    done = hearth("ha", "say", "turn on the hall light", env=home.env(hearth_env))
    assert (done.returncode, done.stdout) == (1, "Sorry, Hall light is not exposed\n")
    assert done.stderr == "error: Home Assistant could not do it (no_valid_targets)\n"
    assert home.state(HALL) == "off"


@needs_extra
def test_a_spoken_command_reaches_assist(home: Home, tmp_path: Path, hearth_env: dict[str, str]) -> None:
    """`hearth listen --ha`: espeak-ng speech → Silero VAD → Whisper (the real packs) → Assist."""
    from benchmarks.rigs import speech

    assert home.state(LIGHT) == "on"  # the tests above turned it on
    wav = speech.speak("Turn off the kitchen light.", tmp_path / "off.wav", "en-gb", 175)
    done = hearth("listen", str(wav), "--ha", "--json", "-p", "hub", "--local", env=home.env(hearth_env))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert speech.normalise(report["text"]) == "turn off the kitchen light"
    assert report["home_assistant"]["response_type"] == "action_done"
    assert report["home_assistant"]["changed"][LIGHT] == "off"
    assert home.state(LIGHT) == "off"


@needs_extra
def test_wrong_token_is_named(home: Home, tmp_path: Path, hearth_env: dict[str, str]) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("eyJhbGciOiJIUzI1NiJ9.e30.not-a-valid-signature\n")
    wrong.chmod(0o600)
    done = hearth("ha", "say", "turn on the kitchen light", env=home.env(hearth_env, wrong))
    assert done.returncode == 1
    assert done.stderr == (
        f"error: Home Assistant at {home.url} rejected the access token from [home_assistant] token_file "
        f"{wrong} (HTTP 401 while connecting): make a new long-lived token (your profile → Security) and "
        "save it there\n"
    )
    assert "not-a-valid-signature" not in done.stderr and done.stdout == ""


@needs_extra
def test_home_assistant_down_is_named(home: Home, hearth_env: dict[str, str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**home.env(hearth_env), "HEARTH_HOME_ASSISTANT__URL": down}
    done = hearth("ha", "say", "turn on the kitchen light", env=env)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: cannot reach Home Assistant at {down} while connecting: connection refused (is Home "
        "Assistant running, and is the port right?)\n"
    )


# -- urllib3-future in the bridge's venv -------------------------------------------------------------


@needs_extra
def test_urllib3_in_this_venv_is_urllib3_future_and_only_the_bridge_uses_it() -> None:
    """niquests depends on urllib3-future, whose wheel ships a top-level `urllib3` (and a .pth that puts
    it back at every interpreter start). In the agent + ha set nothing else imports urllib3: the agent
    stack loads none, and huggingface_hub (through tokenizers) talks httpx2; requests is not there."""
    code = (
        "import importlib.metadata as md, importlib.util, sys\n"
        "import edge_agent.service, edge_agent.hearth, edge_agent.cli, tokenizers, huggingface_hub\n"
        "import onnxruntime, onnxruntime_genai, sentencepiece, amqtt.broker, aiomqtt, jinja2\n"
        "NAMES = ('urllib3', 'urllib3_future', 'requests')\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in NAMES)\n"
        "import homeassistant_api, urllib3\n"
        "try:\n    dist = md.version('urllib3')\nexcept md.PackageNotFoundError:\n    dist = None\n"
        "print(before, urllib3.__version__, md.version('urllib3-future'), dist,\n"
        "      importlib.util.find_spec('requests') is None,\n"
        "      urllib3.__file__.endswith('/site-packages/urllib3/__init__.py'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, version, future, dist, no_requests, top_level = done.stdout.rsplit(" ", 5)
    assert before == "[]"  # the whole agent stack loads no urllib3
    assert version == future  # `import urllib3` is urllib3-future's copy...
    assert dist == "None"  # ...while no urllib3 distribution is installed (pip lists none)
    assert no_requests == "True" and top_level == "True\n"
