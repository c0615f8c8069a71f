"""Requests on a direct link between two hosts, and the broker as the fallback, on a real network: the
hub (Mosquitto + `hearth run`) in one network namespace, the fridge panel (`hearth chat`) in another,
joined by two veth pairs: the broker's network, and a second one the devices' direct links use
([updates] direct_address). That second path is cut two ways while the first stays up:

- mid-stream, silently (no FIN, no RST: nftables drops what the hub sends on the link after a set
  number of bytes, so the cut falls inside the answer whatever the timing): the fridge's stream stalls,
  resumes through the broker on the same hub, and the answer is the one an uncut link gives;
- ``ip link set down`` on the fridge's side: its next request goes through the broker at once, and
  once the link is up again the one after goes direct again.
"""

from __future__ import annotations

import subprocess
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
DIRECT_PORT = 7041
CUT_AFTER = 6000
"""Bytes the hub may send on the link before it goes silent: past the TLS handshake and the household
handshake (about 3 KB), well before the end of a 48-token answer (about 16 KB of padded chunks)."""


def write_config(path: Path, name: str, profile: str, broker: str, state: Path, direct_address: str) -> Path:
    path.write_text("\n".join([
        "[agent]", f'name = "{name}"', f'profile = "{profile}"', "",
        "[engines]", "threads = 1", "",
        "[mesh]", "enabled = true", f'broker = "{broker}"', "embedded_broker = false",
        f'state_dir = "{state}"', "presence_interval_s = 1", "",
        "[updates]", f'direct_address = "{direct_address}"', f"direct_port = {DIRECT_PORT}", "",
        "[routing]", "stall_timeout_s = 2.0", "",
    ]))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def homes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[netlab.Host, netlab.Host, netlab.Link, Path]]:
    tmp = tmp_path_factory.mktemp("direct")
    with netlab.two_hosts() as (a, b):
        link = netlab.add_link(a, b)
        provision(tmp / "hub", tmp / "hub", "hub", "hub")
        provision(tmp / "hub", tmp / "fridge", "fridge", "fridge-panel")
        broker = f"mqtt://{a.ip}:1883"
        hub_cfg = write_config(tmp / "hub.toml", "hub", "hub", broker, tmp / "hub", link.a_ip)
        fridge_cfg = write_config(
            tmp / "fridge.toml", "fridge", "fridge-panel", broker, tmp / "fridge", link.b_ip
        )
        with netlab.process_in(a, *netlab.mosquitto_in(a, tmp / "broker")):
            netlab.wait_for_port(b, a.ip, 1883)
            with netlab.process_in(a, netlab.HEARTH, "run", "--config", str(hub_cfg), env=cli_env()) as hub:
                netlab.wait_for_line(hub, "serving")
                netlab.wait_for_port(b, link.a_ip, DIRECT_PORT)
                yield a, b, link, fridge_cfg


def chat(b: netlab.Host, config: Path) -> tuple[str, str]:
    done = subprocess.run(
        b.cmd(netlab.HEARTH, "chat", PROMPT, "--config", str(config), "--max-tokens", "48"),
        capture_output=True, text=True, env=cli_env(), timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_a_link_gone_silent_mid_answer_resumes_through_the_broker_with_one_answer(
    homes: tuple[netlab.Host, netlab.Host, netlab.Link, Path], llm_int4: GenerateEngine
) -> None:
    a, b, link, fridge_cfg = homes
    expected, _ = llm_int4.complete(GenerateRequest.from_prompt(PROMPT, max_tokens=48))
    before = netlab.link_bytes(b, link.b_dev)
    text, err = chat(b, fridge_cfg)  # the uncut link first: the answer comes on it
    assert text == expected.strip() and "served by hub" in err and "failed" not in err, err
    assert netlab.link_bytes(b, link.b_dev) - before > 8000  # the answer's chunks crossed the second network
    netlab.go_silent_after(a, link.b_ip, DIRECT_PORT, CUT_AFTER)
    try:
        text, err = chat(b, fridge_cfg)
        assert netlab.cut_packets(a) > 0  # the link really went silent
        assert "hub (failed: hub sent nothing on the direct link for 2 s) → hub" in err, err
        assert text == expected.strip(), "the resumed answer differs from the uncut one"
    finally:
        subprocess.run(a.cmd("nft", "delete", "table", "inet", "hearth_cut"), capture_output=True)


def test_a_link_set_down_sends_requests_through_the_broker_until_it_is_up_again(
    homes: tuple[netlab.Host, netlab.Host, netlab.Link, Path], llm_int4: GenerateEngine
) -> None:
    _a, b, link, fridge_cfg = homes
    expected, _ = llm_int4.complete(GenerateRequest.from_prompt(PROMPT, max_tokens=48))
    netlab.set_link(b, link.b_dev, up=False)
    try:
        before = netlab.link_bytes(b, link.b_dev)
        text, err = chat(b, fridge_cfg)
        assert text == expected.strip() and "served by hub" in err and "failed" not in err, err
        assert netlab.link_bytes(b, link.b_dev) == before  # nothing came on the cut network
    finally:
        netlab.set_link(b, link.b_dev, up=True)
    before = netlab.link_bytes(b, link.b_dev)
    text, err = chat(b, fridge_cfg)
    assert text == expected.strip() and "failed" not in err, err
    assert netlab.link_bytes(b, link.b_dev) - before > 8000  # direct again
