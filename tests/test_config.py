from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.toml")))
def test_example_configs_load(name: str) -> None:
    cfg = load_config(REPO / "config" / name, environ={})
    assert cfg.agent.name


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[engines]\nidle_unload_s = 10\n[agent]\nname = "x"\n')
    cfg = load_config(path, environ={"HEARTH_ENGINES__IDLE_UNLOAD_S": "42", "HEARTH_AGENT__NAME": "fridge"})
    assert cfg.engines.idle_unload_s == 42 and cfg.agent.name == "fridge"


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        (
            "[engines]\nidle_unload_s = -1\n",
            {},
            r"{path}: engines.idle_unload_s: Input should be greater than 0",
        ),
        ("[agent]\nlog_level = 'loud'\n", {}, r"{path}: agent.log_level: Input should be 'debug'"),
        ("[engines]\nthreds = 2\n", {}, r"{path}: engines.threds: Extra inputs are not permitted"),
        ("[demo]\nembed = ['one']\n", {}, r"{path}: demo.embed: List should have at least 2 items"),
        ("[engines\n", {}, r"{path}: invalid TOML"),
        (
            "[mesh.coap]\npeers = ['hub.lan:5683']\n",
            {},
            r"{path}: mesh.coap.peers: 'hub.lan:5683' is not host:port with an IP literal",
        ),
        (
            "[mesh]\ntransports = ['coap', 'coap']\n",
            {},
            r"{path}: mesh.transports: each transport once",
        ),
        (
            "[mesh]\ntransports = ['udp']\n",
            {},
            r"{path}: mesh.transports\[0\]: Input should be 'mqtt' or 'coap'",
        ),
        (
            "",
            {"HEARTH_ENGINES__THREADS": "zero"},
            r"HEARTH_ENGINES__THREADS \(environment\): engines.threads: Input should be a valid integer",
        ),
    ],
)
def test_invalid_config_names_source_field_and_reason(
    tmp_path: Path, toml: str, env: dict, expected: str
) -> None:  # type: ignore[type-arg]
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=expected.format(path=path)):
        load_config(path, environ=env)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe[agent]")
    with pytest.raises(ConfigError, match=r"bin.toml: not UTF-8"):
        load_config(bad, environ={})


def test_cli_reports_invalid_config_with_exit_code_2(tmp_path: Path, hearth_env: dict[str, str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[engines]\nmax_embed_batch = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(path), "--profile", "hub"],
        capture_output=True,
        text=True,
        env=hearth_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        f"{path}: engines.max_embed_batch: Input should be greater than or equal to 1"
        in proc.stderr.replace("\n", "")
    )
    assert "Traceback" not in proc.stderr


def test_coap_peers_and_settings_from_config(tmp_path: Path) -> None:
    from edge_agent.connect import coap_settings

    path = tmp_path / "agent.toml"
    path.write_text(
        "[mesh]\ntransports = ['coap']\n[mesh.coap]\nbind = '127.0.0.1'\nport = 6000\n"
        "peers = ['127.0.0.1:6001', '[fd00::2]:5683']\nmulticast = true\n"
    )
    mesh = load_config(path, environ={}).mesh
    assert mesh.coap.seeds() == [("127.0.0.1", 6001), ("fd00::2", 5683)]
    agent, one_shot = coap_settings(mesh), coap_settings(mesh, one_shot=True)
    assert (agent.port, one_shot.port) == (6000, 0)  # a one-shot command leaves the agent its port
    assert agent.advertise == ["127.0.0.1"]  # bound to one address: that one is announced
    assert agent.multicast_interfaces == []  # not bound to every interface: no group traffic comes
