"""Real household devices for the end-to-end test: each is the `hearth` command of the agent's own venv
(Home Assistant's venv has no onnxruntime) with its own config and state, run the way a user runs it.
Every process is stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent import processes
from edge_agent.ha_discovery.agent import ids_of
from edge_agent.mesh.state import HouseholdState

REPO = Path(__file__).resolve().parents[2]
AGENT_PYTHON = REPO / ".venv" / "bin" / "python"
PACKS = Path(os.environ.get("HEARTH_HOME", str(REPO / ".hearth")))
"""The model packs `make packs` built (the agents only read them)."""


@dataclass
class Device:
    """One household device: its name, profile, and a directory with its config, state and log."""

    name: str
    profile: str
    home: Path
    broker: str
    proc: subprocess.Popen[bytes] | None = None
    """Its `hearth run`, while it runs."""

    @property
    def config(self) -> Path:
        return self.home / f"{self.name}.toml"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def device_id(self) -> str:
        return HouseholdState(self.state_dir).load().certificate.device_id

    @property
    def discovery_id(self) -> str:
        """Its MQTT discovery object id: a hash of its device id keyed by the household's root key
        (`edge_agent.ha_discovery.agent.ids_of`), not the mesh device id (issue 21, N13)."""
        membership, data = HouseholdState(self.state_dir).membership()
        [object_id] = ids_of(membership, [data.certificate.device_id])
        return object_id

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        return env | {
            "HEARTH_HOME": str(PACKS),
            "NO_COLOR": "1",
            "COLUMNS": "250",
            "PYTHONPATH": str(REPO),
            "HEARTH_MESH__ADVERTISE": "off",
        }  # never announce test households on the real LAN

    def write_config(self, extra: str = "") -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'[agent]\nname = "{self.name}"\nprofile = "{self.profile}"\n'
            f'[mesh]\nenabled = true\nbroker = "{self.broker}"\nstate_dir = "{self.state_dir}"\n'
            f"embedded_broker = false\n{extra}"
        )

    def _args(self, *args: str) -> list[str]:
        return [str(AGENT_PYTHON), "-m", "edge_agent", *args, "-c", str(self.config)]

    def hearth(self, *args: str, timeout: float = 120) -> str:
        """`hearth <args> -c <config>`; its output, after checking it succeeded."""
        done = subprocess.run(
            self._args(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0 or "Traceback" in done.stderr:
            raise AssertionError(
                f"`hearth {' '.join(args)}` ({self.name}) failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    @contextlib.contextmanager
    def invite(self, device_class: str) -> Iterator[str]:
        """`hearth household invite` (on the hub) waiting for one device; yields its setup code."""
        args = ["household", "invite", "--class", device_class]
        proc = subprocess.Popen(self._args(*args), env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            assert proc.stdout is not None
            seen = []
            for line in proc.stdout:
                seen.append(line)
                if m := re.search(r"\b(\d{4}-\d{4})\b", line):
                    break
            else:
                raise AssertionError("no setup code from `hearth household invite`:\n" + "".join(seen))
            yield m.group(1)
            # Paired: the hub records the new member and the invitation ends by itself.
            seen += proc.stdout.readlines()
            assert proc.wait(timeout=30) == 0 and "paired" in "".join(seen), "".join(seen)
        finally:
            processes.stop(proc, timeout=10)

    @contextlib.contextmanager
    def run(self) -> Iterator[subprocess.Popen[bytes]]:
        """`hearth run`: the agent with the real packs (it benchmarks itself, then offers its tasks)."""
        with (self.home / "agent.log").open("wb") as log:
            proc = subprocess.Popen(self._args("run"), env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self.proc = proc
            try:
                yield proc
            finally:
                processes.stop(proc, timeout=15)
                self.proc = None

    def chat(self, prompt: str, max_tokens: int) -> str:
        """This device's own answer, greedy (through its running agent's local socket: the same engine)."""
        return self.hearth("chat", prompt, "--max-tokens", str(max_tokens), "--temperature", "0")

    def log_tail(self, lines: int = 40) -> str:
        log = self.home / "agent.log"
        return (
            "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"
        )


def new_household(root: Path, broker: str) -> Device:
    """A hub that is the root of a new household (`hearth household init`)."""
    hub = Device("hub", "hub", root / "hub", broker)
    hub.write_config()
    hub.hearth("household", "init")
    return hub


def join(hub: Device, device: Device, device_class: str) -> Device:
    """``device`` pairs with the hub's invitation (`hearth pair CODE` on the device)."""
    device.write_config()
    with hub.invite(device_class) as code:
        device.hearth("pair", code)
    return device
