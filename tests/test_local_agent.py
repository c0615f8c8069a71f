"""Finding 2: a CLI call must not silence the running agent.

The agent owns its mesh state (send counter, replay window) under a lock; CLI commands reach it over
its owner-only local socket instead of opening that state themselves. Before, `hearth chat` shared the
agent's counter and jumped it 4,096 ahead, so peers refused the agent's next ~3,900 messages.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.rigs.brokers import free_port
from benchmarks.rigs.meshkit import provision
from edge_agent.config import AgentConfig
from edge_agent.errors import StateInUseError
from edge_agent.hearth import Hearth
from edge_agent.mesh.files import StateLock
from edge_agent.models.selection import plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import load_profile

pytestmark = pytest.mark.slow  # a `hearth run` agent process


async def test_a_second_process_cannot_open_the_agents_mesh_state(tmp_path: Path, store: PackStore) -> None:
    state = provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    cfg = AgentConfig.model_validate(
        {"agent": {"name": "hub", "profile": "hub"}, "mesh": {"enabled": True, "state_dir": str(state.dir)}}
    )
    profile = load_profile("hub")
    plan = plan_for_profile(profile, [p.manifest for p in store.list()])
    with StateLock(state.dir):  # the running agent
        before = sorted((p.name, p.read_bytes()) for p in state.dir.rglob("*") if p.is_file())
        hearth = Hearth(cfg, profile, store, plan)
        message = f"{state.dir} is in use by another Hearth process (the running agent); commands reach it "
        with pytest.raises(StateInUseError, match="^" + re.escape(message)):
            await hearth.__aenter__()
        after = sorted((p.name, p.read_bytes()) for p in state.dir.rglob("*") if p.is_file())
    assert after == before  # no counter reserved, no replay window written, nothing touched


def _hearth(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _reserved(state_dir: Path) -> int:
    return int(json.loads((state_dir / "counters" / "send-counter.json").read_text())["reserved"])


def test_cli_commands_go_through_the_running_agent(hearth_env: dict[str, str], tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    state_dir = tmp_path / "hub-state"
    env = {
        **hearth_env,
        "HEARTH_MESH__STATE_DIR": str(state_dir),
        "HEARTH_MESH__BROKER": f"mqtt://127.0.0.1:{free_port()}",
        "HEARTH_MESH__SELF_BENCHMARK": "false",
    }
    cfg = str(repo / "config" / "hub.toml")
    init = _hearth("household", "init", "-c", cfg, env=env)
    assert init.returncode == 0, init.stderr
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "-c", cfg],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sock = state_dir / "agent.sock"
        deadline = time.monotonic() + 120
        while not sock.exists():  # the agent creates its socket once it is fully up
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent never opened its local socket"
            time.sleep(0.2)
        assert sock.stat().st_mode & 0o777 == 0o600
        reserved = _reserved(state_dir)
        for _ in range(2):
            chat = _hearth("chat", "Say hi.", "-c", cfg, "--max-tokens", "6", env=env)
            assert chat.returncode == 0, chat.stderr
            assert "served by hub (local)" in chat.stderr
        peers = _hearth("peers", "-c", cfg, "--json", "--wait", "0", env=env)
        assert peers.returncode == 0 and json.loads(peers.stdout)["household"], peers.stderr
        translated = _hearth("translate", "-f", "en", "-t", "pt", "Good morning.", "-c", cfg, env=env)
        assert translated.returncode == 0 and translated.stdout.strip(), translated.stderr
        # The CLI never reserved counters of its own: only the agent writes its counter file.
        assert _reserved(state_dir) == reserved
        # Nobody but the owner may use the socket: connecting as another user is refused by the
        # directory (0700) and the socket mode (0600); the agent checks peer credentials as well.
        assert state_dir.stat().st_mode & 0o777 == 0o700
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(sock))
            probe.sendall(b'{"op": "nonsense"}\n')
            answer = json.loads(probe.makefile().readline())
        assert answer["event"] == "error" and answer["kind"] == "invalid"
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
        log.close()
    assert not (state_dir / "agent.sock").exists()
