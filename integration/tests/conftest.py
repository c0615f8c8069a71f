"""Fixtures for the Home Assistant tests: a real Mosquitto and a real hub (the `hearth` of the agent's
own venv, in its own processes: Home Assistant's venv has no onnxruntime), every process stopped by PID."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT_PYTHON = REPO / ".venv" / "bin" / "python"


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Load custom_components/hearth in every test."""


@pytest.fixture(autouse=True)
async def ha_core(hass: Any, tmp_path: Path) -> None:
    """Each test's Home Assistant keeps its files (.storage/hearth: keys, certificates) in its own
    directory, not in the test harness's shared testing_config; and has its core integration (the
    conversation dependency needs it, as a real Home Assistant always has it)."""
    from homeassistant.setup import async_setup_component

    config = tmp_path / "ha-config"
    config.mkdir()
    hass.config.config_dir = str(config)
    assert await async_setup_component(hass, "homeassistant", {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Hub:
    """A household hub: its state dir and how to run `hearth` as it."""

    home: Path
    broker: str
    env: dict[str, str]

    def hearth(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(AGENT_PYTHON), "-m", "edge_agent", *args, "-c", str(self.config)],
                              env=self.env, capture_output=True, text=True, timeout=60)  # fmt: skip

    @property
    def config(self) -> Path:
        return self.home / "hub.toml"

    @contextlib.contextmanager
    def run(self) -> Iterator[subprocess.Popen[str]]:
        """`hearth run`: the hub agent with the real packs (it self-benchmarks, then offers its tasks)."""
        packs = os.environ.get("HEARTH_HOME", str(REPO / ".hearth"))
        env = self.env | {"HEARTH_HOME": packs}
        log = (self.home / "agent.log").open("w")
        args = [str(AGENT_PYTHON), "-m", "edge_agent", "run", "-c", str(self.config)]
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            yield proc
        finally:
            _stop(proc)
            log.close()

    def chat(self, prompt: str, max_tokens: int) -> str:
        """The hub's own answer (through its running agent's local socket: the same engine)."""
        packs = Path(os.environ.get("HEARTH_HOME", str(REPO / ".hearth")))
        return chat_on(self.config, packs, prompt, max_tokens)

    def translate(self, text: str, source: str, target: str) -> str:
        """The hub's own translation (through its running agent: the same engine and memory)."""
        packs = os.environ.get("HEARTH_HOME", str(REPO / ".hearth"))
        args = [str(AGENT_PYTHON), "-m", "edge_agent", "translate", text, "--from", source, "--to", target,
                "-c", str(self.config)]  # fmt: skip
        done = subprocess.run(args, env=self.env | {"HEARTH_HOME": packs}, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    def invite(self, device_class: str = "hub", *options: str) -> tuple[subprocess.Popen[str], str]:
        """`hearth household invite` (with ``options``) waiting for one device; returns the process and
        its code."""
        proc = subprocess.Popen([str(AGENT_PYTHON), "-m", "edge_agent", "household", "invite", "--class",
                                 device_class, *options, "-c", str(self.config)], env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if m := re.search(r"\b(\d{4}-\d{4})\b", line):
                return proc, m.group(1)
        raise AssertionError("no setup code from `hearth household invite`:\n" + "".join(seen))


class Broker:
    """A real Mosquitto on a fixed loopback port that a test can stop and start again (the same port)."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "log_dest none\n" + ("user root\n" if os.geteuid() == 0 else ""))  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path, socket_enabled: None) -> Iterator[Broker]:
    running = Broker(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def mosquitto(broker: Broker) -> str:
    return broker.url


def make_hub(home: Path, broker: str) -> Hub:
    """A new household whose hub uses ``broker`` (``hearth household init`` in the agent's venv)."""
    if not AGENT_PYTHON.exists():
        pytest.fail(f"the agent's venv is missing ({AGENT_PYTHON}): run `make install-dev` first")
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env |= {
        "HEARTH_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "250",
        "HEARTH_MESH__ADVERTISE": "off",
    }  # never announce test households on the real LAN
    h = Hub(home, broker, env)
    mesh = f'broker = "{broker}"\nstate_dir = "{home / "state"}"\nembedded_broker = false\n'
    h.config.write_text(f'[agent]\nname = "hub"\nprofile = "hub"\n[mesh]\nenabled = true\n{mesh}')
    init = h.hearth("household", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    return h


@pytest.fixture
def hub(tmp_path: Path, mosquitto: str) -> Hub:
    return make_hub(tmp_path / "hub", mosquitto)


def add_member(
    hub: Hub,
    home: Path,
    name: str,
    *,
    serves: list[str],
    device_class: str,
    valid_days: int = 365,
    profile: str | None = None,
) -> Path:
    """Make ``home`` a member of the hub's household without the network, as the hub's root would
    on pairing (pairing itself is tested through the config flow)."""
    from edge_agent.mesh.state import HouseholdFile, HouseholdState
    from edge_agent.tasks import TASKS

    hub_state = HouseholdState(hub.home / "state")
    member = HouseholdState(home)
    root, _ = hub_state.load_root()
    cert = root.issue(
        member.identity, name=name, profile=profile or name, requests=list(TASKS),
        serves=serves,  # type: ignore[arg-type]
        device_class=device_class,  # type: ignore[arg-type]
        valid_for=timedelta(days=valid_days),
    )  # fmt: skip
    hub_state.record_issued(root, cert)
    data = hub_state.load()
    member.save(HouseholdFile(root_key=data.root_key, certificate=cert, crl=data.crl,
                              group_key=data.group_key, group_epoch=data.group_epoch,
                              peers=[data.certificate, *data.peers]))  # fmt: skip
    return home


def chat_on(config: Path, packs: Path, prompt: str, max_tokens: int) -> str:
    """`hearth chat` on the device of ``config`` (its running agent's local socket: its own engine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env |= {
        "HEARTH_HOME": str(packs),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "250",
        "HEARTH_MESH__ADVERTISE": "off",
    }  # never announce test households on the real LAN
    args = [str(AGENT_PYTHON), "-m", "edge_agent", "chat", prompt, "--max-tokens", str(max_tokens),
            "--temperature", "0", "-c", str(config)]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run_agent(home: Path, config: Path, packs: Path, log: Path) -> subprocess.Popen[str]:
    """`hearth run` for another household device (its own pack store ``packs``); stop it with _stop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env |= {
        "HEARTH_HOME": str(packs),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "250",
        "HEARTH_MESH__ADVERTISE": "off",
    }  # never announce test households on the real LAN
    with log.open("w") as out:
        return subprocess.Popen([str(AGENT_PYTHON), "-m", "edge_agent", "run", "-c", str(config)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, cwd=home)  # fmt: skip


def agent_python(code: str, *args: str, packs: Path | None = None) -> str:
    """Run ``code`` in the agent's venv (it has the engines and the pack store's builders)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")} | {"PYTHONPATH": str(REPO)}
    if packs is not None:
        env["HEARTH_HOME"] = str(packs)
    done = subprocess.run([str(AGENT_PYTHON), "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
