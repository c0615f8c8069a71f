"""A household with no broker (issue 24's acceptance): `hearth run` agents in network namespaces on one
bridge, reaching each other over CoAP with OSCORE, found by multicast alone (no seeds, no mDNS).

- three hosts (fridge, car, hub) find each other; the fridge's request goes to a device that serves
  generate, that device goes dark one chunk into its answer (nftables in the switch, counting messages,
  then its link is set down), and the fridge's answer resumes on the other: one answer, the one the
  local engine gives, one failover;
- 30 % random loss on the fridge: every answer still arrives whole and exactly once, within its deadline;
- a mixed household: the fridge on CoAP only, the car on MQTT only (Mosquitto on the hub), the hub on
  both; each gets its answer from the hub, on its own transport.

Requests go through each agent's local socket, as `hearth chat` sends them; answers are greedy and
compared word for word.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.rigs import netlab
from benchmarks.rigs.meshkit import provision
from edge_agent.client.schemas import GenerateRequest
from edge_agent.engines.generate import GenerateEngine
from tests.support.cli import cli_env
from tests.support.coap_lan import (
    COAP_PORT,
    Agent,
    FirstServerCut,
    agents,
    ask,
    car_profile,
    fridge_profile,
    lan_device,
    until_peers,
    write_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(netlab.available() is not None, reason=str(netlab.available())),
]

PROMPT = "Describe a kitchen in three sentences."
MAX_TOKENS = 48
DEADLINE_S = 60.0
"""The fridge's [routing] deadline_s: an answer must arrive within it, loss or not."""
ASK_FIRST = {"mode": "offload-first", "stall_timeout_s": 2.0, "deadline_s": DEADLINE_S}
"""Routing of the devices that ask (the fridge; the car in the mixed household): the household first,
this device itself when no other can; a silent server is given up after 2 s."""


@pytest.fixture(scope="module")
def expected(llm_int4: GenerateEngine) -> str:
    text, _ = llm_int4.complete(GenerateRequest.from_prompt(PROMPT, max_tokens=MAX_TOKENS))
    return text


@pytest.fixture(scope="module")
def profiles() -> Iterator[dict[str, str]]:
    """Each device's profile: the hub's own, and YAML files for the car and the fridge, in a directory
    with a short path (a certificate names its profile in at most 63 characters)."""
    with tempfile.TemporaryDirectory(prefix="hearth-") as directory:
        yield {
            "hub": "hub",
            "fridge": str(fridge_profile(Path(directory))),
            "car": str(car_profile(Path(directory))),
        }


@dataclass
class Home:
    hosts: dict[str, netlab.Host]
    agents: dict[str, Agent]


@pytest.fixture(scope="module")
def coap_home(tmp_path_factory: pytest.TempPathFactory, profiles: dict[str, str]) -> Iterator[Home]:
    """Fridge, car and hub on CoAP only, no broker anywhere; the car and the hub serve generate with
    the same pack. One household for the module: its tests only ask from the fridge."""
    tmp = tmp_path_factory.mktemp("coap")
    for name, profile in profiles.items():
        provision(tmp / "hub", tmp / name, name, profile)
    with netlab.lan(["fridge", "car", "hub"]) as hosts:
        specs = {
            name: (
                hosts[name],
                write_config(tmp / f"{name}.toml", name, profile, tmp / name,
                             routing=ASK_FIRST if name == "fridge" else None),
                tmp / name,
            )
            for name, profile in profiles.items()
        }  # fmt: skip
        with agents(specs, cli_env()) as running:
            yield Home(hosts, running)


async def test_three_hosts_find_each_other_by_multicast_and_a_cut_server_fails_over_mid_answer(
    coap_home: Home, expected: str
) -> None:
    hosts, running = coap_home.hosts, coap_home.agents
    for name, agent in running.items():
        report = await until_peers(agent, set(running) - {name})
        for peer in report.peers:  # each found the others' CoAP address, and talks OSCORE to them
            assert peer.coap == f"{hosts[peer.name].ip}:{COAP_PORT}", peer
            assert peer.path == "coap" and peer.envelope == 2, peer
    fridge = running["fridge"]
    cut = FirstServerCut(hosts, "fridge")
    downed: list[str] = []

    def link_down() -> None:  # the first words are in: the server's link goes down too
        server = cut.armed()
        assert server is not None
        netlab.set_link(hosts[server], lan_device(hosts[server]), up=False)
        downed.append(server)

    try:
        answer = await ask(fridge, PROMPT, MAX_TOKENS, on_first_chunk=link_down)
        first = cut.armed()
        # Its first words passed; the rest was dropped in the switch, or never left (its link went down
        # before its third message).
        assert first in ("hub", "car") and downed == [first] and cut.cut() in (None, first), fridge.output()
    finally:
        for server in downed:
            netlab.set_link(hosts[server], lan_device(hosts[server]), up=True)
        cut.remove()
    other = ({"hub", "car"} - {first}).pop()
    # One failover, from the cut device to the other: every attempt on the cut one failed (after its
    # OSCORE path went silent, once more on its transport), the other's finished the answer.
    assert answer.devices() == [first, other], answer
    assert all(failed for name, failed in answer.attempts() if name == first), answer
    assert answer.attempts()[-1] == (other, False), answer
    assert answer.text == expected, f"{answer.chunks} != {expected!r}"
    assert answer.chunks[0] != answer.text  # the first server's words, then the other's


async def test_a_lossy_fridge_gets_every_answer_whole_and_once(coap_home: Home, expected: str) -> None:
    hosts, fridge = coap_home.hosts, coap_home.agents["fridge"]
    await until_peers(fridge, {"hub", "car"})  # a device cut before is back
    netlab.set_loss(hosts["fridge"], 30)  # 30 % of the fridge's packets, both ways
    try:
        answers = [await ask(fridge, PROMPT, MAX_TOKENS) for _ in range(3)]
        assert netlab.dropped_packets(hosts["fridge"]) > 0  # the loss really happened
    finally:
        netlab.set_loss(hosts["fridge"], 0)
    for answer in answers:  # from the devices, from the fridge itself, or some of each: all of it, once
        assert answer.text == expected, (answer, fridge.output())
        assert answer.seconds < DEADLINE_S, answer
    # The first went to a device over the lossy link (the household is asked first, and both were live).
    assert answers[0].devices()[0] in ("hub", "car"), answers[0]


async def test_a_mixed_household_the_hub_serves_a_coap_fridge_and_an_mqtt_car(
    tmp_path: Path, profiles: dict[str, str], expected: str
) -> None:
    car, fridge = profiles["car"], profiles["fridge"]
    for name, profile in profiles.items():
        provision(tmp_path / "hub", tmp_path / name, name, profile)
    with netlab.lan(["fridge", "car", "hub"]) as hosts, contextlib.ExitStack() as stack:
        hub = hosts["hub"]
        broker = f"mqtt://{hub.ip}:1883"
        stack.enter_context(netlab.process_in(hub, *netlab.mosquitto_in(hub, tmp_path / "mq")))
        netlab.wait_for_port(hosts["car"], hub.ip, 1883)
        configs = {
            "hub": write_config(tmp_path / "hub.toml", "hub", "hub", tmp_path / "hub",
                                transports=("mqtt", "coap"), broker=broker),
            "fridge": write_config(tmp_path / "fridge.toml", "fridge", fridge, tmp_path / "fridge",
                                   routing=ASK_FIRST),
            # The car runs the LLM too, but at home it asks the hub first.
            "car": write_config(tmp_path / "car.toml", "car", car, tmp_path / "car", transports=("mqtt",),
                                broker=broker, routing=ASK_FIRST),
        }  # fmt: skip
        specs = {name: (hosts[name], config, tmp_path / name) for name, config in configs.items()}
        running = stack.enter_context(agents(specs, cli_env()))
        # The hub reaches the fridge over CoAP, the car over MQTT (through the broker, or the direct
        # link whose address the car announces there); the fridge and the car share no transport, so
        # each knows the hub only.
        hub_view = await until_peers(running["hub"], {"fridge", "car"})
        paths = {p.name: (p.path, p.coap) for p in hub_view.peers}
        assert paths["fridge"] == ("coap", f"{hosts['fridge'].ip}:{COAP_PORT}"), paths
        assert paths["car"][0] in ("broker", "direct") and paths["car"][1] is None, paths
        fridge_view = await until_peers(running["fridge"], {"hub"})
        assert [(p.path, p.coap) for p in fridge_view.peers] == [("coap", f"{hub.ip}:{COAP_PORT}")]
        car_view = await until_peers(running["car"], {"hub"})
        assert [p.path for p in car_view.peers] in (["broker"], ["direct"]), car_view.peers
        for name in ("fridge", "car"):
            answer = await ask(running[name], PROMPT, MAX_TOKENS)
            assert (answer.text, answer.hops) == (expected, "hub"), (answer, running[name].output())
