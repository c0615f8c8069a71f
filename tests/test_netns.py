"""Two hosts, a real network between them: the hub (Mosquitto + `hearth run`) in one network namespace,
the fridge panel (`hearth chat`) in another, joined by a veth pair; nftables drops packets at random."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rigs import netlab
from benchmarks.rigs.meshkit import provision
from edge_agent.client.schemas import GenerateRequest
from edge_agent.engines.generate import GenerateEngine
from tests.support.cli import cli_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(netlab.available() is not None, reason=str(netlab.available())),
]

PROMPT = "Describe a kitchen in three sentences."


def write_config(path: Path, name: str, profile: str, broker: str, state: Path, **routing: object) -> Path:
    lines = [
        "[agent]", f'name = "{name}"', f'profile = "{profile}"', "",
        "[engines]", "threads = 1", "",
        "[mesh]", "enabled = true", f'broker = "{broker}"', "embedded_broker = false",
        f'state_dir = "{state}"', "presence_interval_s = 1", "",
        "[routing]", *(f"{k} = {v!r}".replace("'", '"') for k, v in routing.items()),
    ]  # fmt: skip
    path.write_text("\n".join(lines).replace("True", "true").replace("False", "false") + "\n")
    return path


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[netlab.Host, netlab.Host, Path]]:
    """Host a runs Mosquitto and the hub agent; host b is the fridge panel (its config is returned).
    One for the module: its tests only ask the hub, each after setting the fridge's packet loss."""
    tmp_path = tmp_path_factory.mktemp("lan")
    with netlab.two_hosts() as (a, b):
        provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
        provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
        broker = f"mqtt://{a.ip}:1883"
        hub_cfg = write_config(tmp_path / "hub.toml", "hub", "hub", broker, tmp_path / "hub")
        fridge_cfg = write_config(
            tmp_path / "fridge.toml",
            "fridge",
            "fridge-panel",
            broker,
            tmp_path / "fridge",
            stall_timeout_s=5.0,
        )
        with netlab.process_in(a, *netlab.mosquitto_in(a, tmp_path / "broker")):
            netlab.wait_for_port(b, a.ip, 1883)
            with netlab.process_in(a, netlab.HEARTH, "run", "--config", str(hub_cfg), env=cli_env()) as hub:
                netlab.wait_for_line(hub, "serving")
                yield a, b, fridge_cfg


def chat(b: netlab.Host, config: Path, env: dict[str, str]) -> tuple[int, str, str, float]:
    import subprocess

    t0 = time.monotonic()
    done = subprocess.run(
        b.cmd(netlab.HEARTH, "chat", PROMPT, "--config", str(config), "--max-tokens", "48"),
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr, time.monotonic() - t0


def test_chat_crosses_a_lossy_link_and_arrives_whole(
    lan: tuple[netlab.Host, netlab.Host, Path], hearth_env: dict[str, str], llm_int4: GenerateEngine
) -> None:
    _a, b, fridge_cfg = lan
    expected, _ = llm_int4.complete(GenerateRequest.from_prompt(PROMPT, max_tokens=48))
    netlab.set_loss(b, 0)
    code, out, err, _ = chat(b, fridge_cfg, hearth_env)  # a clean link first
    assert code == 0, err
    assert out.strip() == expected.strip() and "served by hub" in err
    netlab.set_loss(b, 10)  # 10 % of the fridge's packets, both directions
    code, out, err, _ = chat(b, fridge_cfg, hearth_env)
    assert code == 0, err
    assert out.strip() == expected.strip(), "lossy link changed the answer"
    assert "served by hub" in err
    assert netlab.dropped_packets(b) > 0  # the loss really happened


def test_a_partitioned_fridge_says_no_device_can_answer(
    lan: tuple[netlab.Host, netlab.Host, Path], hearth_env: dict[str, str]
) -> None:
    _a, b, fridge_cfg = lan
    netlab.set_loss(b, 100)
    code, _out, err, took = chat(b, fridge_cfg, hearth_env)
    assert code != 0 and "Traceback" not in err
    assert "broker" in err.lower() or "no device" in err.lower(), err
    assert took < 60
