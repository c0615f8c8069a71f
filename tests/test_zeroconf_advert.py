"""The household's zeroconf advert: what a hub puts on the LAN for Home Assistant, over real mDNS.

The network tests run real agents (the `Hearth` façade, as `hearth run` assembles it) and a real
python-zeroconf browser (what Home Assistant's zeroconf integration runs) in network namespaces on one
bridge, so multicast flows as on a home LAN and nothing leaks onto the machine's own network. Each
process is stopped by its PID and each namespace deleted. Ordering, not time, is the evidence that a
device stayed silent: it had settled (decided, and would have announced) before a device that does
advertise started, and the browser saw only the latter.

The contract itself (TXT model, instance name, hostile TXT) is pure and tested without a network.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.rigs import netlab
from benchmarks.rigs.meshkit import provision
from edge_agent import processes
from edge_agent.config import load_config
from edge_agent.discovery.advertiser import AdvertSource, LanView, lan_view, service_info, should_advertise
from edge_agent.errors import ConfigError
from edge_agent.mesh.advertisement import (
    SERVICE_TYPE,
    AdvertisementError,
    HouseholdAdvert,
    ascii_name,
    instance_label,
)
from edge_agent.mesh.state import HouseholdState

HH = "0123456789abcdef"
PORT = 1883
WAIT_S = 30.0
"""Bound on any one expected event; the tests wait on the events themselves, never on time."""


def needs_netns(test: Callable[..., None]) -> Callable[..., None]:
    """Two hosts in network namespaces: the slow tier, and skipped where namespaces cannot be made."""
    unavailable = netlab.available()
    return pytest.mark.slow(pytest.mark.skipif(unavailable is not None, reason=str(unavailable))(test))


# -- the contract, no network -------------------------------------------------------------------------


def txt(**over: str | None) -> dict[str, str | None]:
    good: dict[str, str | None] = {"v": "1", "hh": HH, "broker": "mqtt://192.168.1.5:1883", "name": "hub",
                                   "class": "hub"}  # fmt: skip
    good.update(over)
    return {k: v for k, v in good.items() if v != "<drop>"}


def test_should_advertise_auto_means_hubs_only() -> None:
    assert should_advertise("auto", "hub")
    assert not any(should_advertise("auto", c) for c in ("appliance", "vehicle", "phone", "laptop", "server"))
    assert should_advertise("on", "appliance") and should_advertise("on", "hub")
    assert not should_advertise("off", "hub")


def test_service_info_carries_exactly_the_contract() -> None:
    source = AdvertSource(household_id=HH, device_name="Küche hub", device_class="hub",
                          broker="mqtts://127.0.0.1:8883")  # fmt: skip
    info = service_info(source, LanView("mqtts://192.168.1.5:8883", 8883, ("192.168.1.5", "fd00::5")))
    assert info.type == SERVICE_TYPE
    assert info.name == f"Küche hub (01234567).{SERVICE_TYPE}"
    assert info.port == 8883
    assert info.parsed_addresses() == ["192.168.1.5", "fd00::5"]
    assert (
        info.server is not None
        and info.server.startswith("hearth-01234567-")
        and info.server.endswith(".local.")
    )
    assert info.decoded_properties == {"v": "1", "hh": HH, "broker": "mqtts://192.168.1.5:8883",
                                       "name": "Kuche hub", "class": "hub"}  # fmt: skip
    advert = HouseholdAdvert.parse(info.properties)
    assert (
        advert.tls and advert.broker_host_port == ("192.168.1.5", 8883) and advert.names_instance(info.name)
    )


@pytest.mark.parametrize(
    "name",
    ["a" * 64, "ä" * 64, "Kitchen.Hub\\2", "bad\x00name\x1b[31m", "  \t ", "😀" * 30, "x" * 54 + "é"],
)
def test_instance_names_fit_dns_sd(name: str) -> None:
    label = instance_label(name, HH)
    assert len(label.encode()) <= 63 and label.endswith(" (01234567)")
    assert not any(c in label for c in ".\\") and all(ord(c) >= 0x20 and c != "\x7f" for c in label)
    src = AdvertSource(household_id=HH, device_name=name, device_class="hub", broker="mqtt://127.0.0.1:1")
    info = service_info(src, LanView("mqtt://10.0.0.1:1", 1, ("10.0.0.1",)))  # python-zeroconf accepts it
    assert HouseholdAdvert.parse(info.properties).name == ascii_name(name)


def test_txt_round_trips_from_bytes_and_from_home_assistants_strings() -> None:
    advert = HouseholdAdvert.parse(txt())
    assert advert.properties() == txt()
    raw = {k.encode(): (v or "").encode() for k, v in txt().items()}
    assert HouseholdAdvert.parse(raw) == advert
    # RFC 6763: keys are case-insensitive, unknown keys are ignored (a later version may add some).
    assert (
        HouseholdAdvert.parse({**{k.upper(): v for k, v in txt().items()}, "future": "x", "flag": None})
        == advert
    )
    assert HouseholdAdvert.parse(txt(broker="mqtt://[fd00::5]:1883")).broker_host_port == ("fd00::5", 1883)
    assert HouseholdAdvert.parse(txt(broker="mqtts://hub.lan:8883")).broker_host_port == ("hub.lan", 8883)


@pytest.mark.parametrize(
    ("properties", "error"),
    [
        (txt(hh="0123456789ABCDEF"), r"hh: String should match pattern"),
        (txt(hh="0123456789abcde"), r"hh: String should match pattern"),
        (txt(hh="<drop>"), r"hh: Field required"),
        (txt(broker="http://192.168.1.5:1883"), r"broker: must be mqtt://host:port or mqtts://host:port"),
        (txt(broker="mqtt://192.168.1.5"), r"broker: must be mqtt://host:port"),
        (txt(broker="mqtt://user:pw@192.168.1.5:1883"), r"broker: must be mqtt://host:port"),
        (txt(broker="mqtt://192.168.1.5:1883/topic"), r"broker: must be mqtt://host:port"),
        (txt(broker="mqtt://192.168.1.5:70000"), r"broker: port 70000 is out of range"),
        (txt(broker="mqtt://bad_host!:1883"), r"broker: 'bad_host!' is not a host name"),
        (txt(broker="mqtt://[zz::1]:1883"), r"broker: must be mqtt://host:port"),
        (txt(broker="mqtt://" + "a" * 200 + ":1883"), r"broker: String should have at most 200 characters"),
        (txt(broker="mqtt://" + "a" * 240 + ":1883"), r"'broker' is 259 bytes, over DNS's 255"),
        (txt(**{"class": "overlord"}), r"class: Input should be 'appliance', 'vehicle', 'hub'"),
        (txt(name=""), r"name: String should have at least 1 character"),
        (txt(name="n" * 65), r"name: String should have at most 64 characters"),
        (txt(v="2"), r"advert version '2' is not supported"),
        (txt(v=None), r"'v' has no value"),
        (txt(name="Küche"), r"a value is not ASCII"),
        (txt(name="hub\x1b[2J"), r"a value holds control characters"),
        (txt(hh="a" * 300), r"'hh' is 303 bytes, over DNS's 255"),
        ({**txt(), **{f"k{i}": "x" for i in range(12)}}, r"17 keys, more than 16"),
        ({**txt(), **{f"pad{i}": "x" * 200 for i in range(3)}}, r"more than 512 bytes"),
        ({**txt(), "HH": HH}, r"key 'hh' appears twice"),
        ({b"hh\xff": b"x"}, r"a key is not ASCII"),
    ],
)
def test_hostile_txt_is_refused_with_a_clear_error(properties: dict[Any, Any], error: str) -> None:
    with pytest.raises(AdvertisementError, match=error):
        HouseholdAdvert.parse(properties)


def test_lan_view_for_a_broker_here_and_one_elsewhere() -> None:
    def towards(routes: dict[str, str]) -> Callable[[str, int], str | None]:
        return lambda host, port: routes.get(host)

    lan = lambda: ["172.17.0.1", "192.168.1.5", "fd00::5"]  # noqa: E731 (docker's bridge listed first)
    here = lan_view("mqtts://127.0.0.1:8883", addresses=lan, towards=towards({"192.0.2.1": "192.168.1.5"}))
    assert here == LanView("mqtts://192.168.1.5:8883", 8883, ("192.168.1.5", "172.17.0.1", "fd00::5"))
    no_route = lan_view("mqtt://0.0.0.0:1883", addresses=lan, towards=towards({}))
    assert no_route.broker == "mqtt://172.17.0.1:1883"
    elsewhere = lan_view("mqtt://hub.lan:1883", addresses=lan, towards=towards({"hub.lan": "192.168.1.7"}))
    assert elsewhere == LanView("mqtt://hub.lan:1883", 1883, ("192.168.1.7",))
    own_name = lan_view("mqtt://myhost:1883", addresses=lan, towards=towards({"myhost": "127.0.1.1"}))
    assert own_name.broker == "mqtt://myhost:1883" and "192.168.1.5" in own_name.addresses
    with pytest.raises(OSError, match="no LAN address"):
        lan_view("mqtt://127.0.0.1:1883", addresses=lambda: [], towards=towards({}))
    with pytest.raises(OSError, match="no route to the broker"):
        lan_view("mqtt://hub.lan:1883", addresses=lan, towards=towards({}))


def test_config_names_a_bad_advertise_value(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[mesh]\nadvertise = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"mesh\.advertise: Input should be 'auto', 'on' or 'off'"):
        load_config(path, environ={})
    assert load_config(None, environ={"HEARTH_MESH__ADVERTISE": "off"}).mesh.advertise == "off"


def test_the_contract_imports_without_zeroconf_or_the_agent_config() -> None:
    """The Home Assistant component imports the mesh library alone: the TXT model must not drag in
    python-zeroconf, the agent's config or any engine."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'zeroconf', 'ifaddr', 'onnxruntime', 'amqtt', 'numpy'} or name in "
        "{'edge_agent.config', 'edge_agent.discovery'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edge_agent.mesh.advertisement import HouseholdAdvert\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


# -- real mDNS between namespaces ---------------------------------------------------------------------


class Proc:
    """A process in a namespace whose output is read by a thread, so the test can wait for a line with
    a bound instead of blocking on readline forever."""

    def __init__(self, host: netlab.Host, *args: str) -> None:
        self.proc = subprocess.Popen(host.cmd(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=dict(os.environ))  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The next JSON line that ``match``es (earlier ones are kept in ``events``)."""
        end = time.monotonic() + WAIT_S
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"exited (code {self.proc.wait()}) before {what}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if line.startswith("{"):
                event: dict[str, Any] = json.loads(line)
                self.events.append(event)
                if match(event):
                    return event
        raise AssertionError(f"no {what} within {WAIT_S:g} s:\n{''.join(self.seen)}")

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        processes.stop(self.proc)
        self._reader.join(WAIT_S)  # the pipe is at EOF once the process is gone
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def started(host: netlab.Host, *args: str) -> Iterator[Proc]:
    proc = Proc(host, *args)
    try:
        yield proc
    finally:
        proc.stop()


def lab(host: netlab.Host, *args: str) -> contextlib.AbstractContextManager[Proc]:
    return started(host, sys.executable, "-m", "tests.support.zeroconf_lab", *args)


def agent_config(name: str, profile: str, broker: str, advertise: str | None, embedded: bool = False) -> str:
    mesh: dict[str, Any] = {
        "enabled": True,
        "broker": broker,
        "self_benchmark": False,
        "embedded_broker": embedded,
    }
    if advertise is not None:
        mesh["advertise"] = advertise
    return json.dumps({"agent": {"name": name, "profile": profile}, "mesh": mesh,
                       "updates": {"enabled": False}, "engines": {"threads": 1}})  # fmt: skip


def run_agent(host: netlab.Host, home: Path, config: str) -> contextlib.AbstractContextManager[Proc]:
    return lab(host, "agent", "--home", str(home), "--config", config)


def settled(agent: Proc) -> dict[str, Any]:
    """The agent's report once its advertiser has settled (advertising, disabled or failed)."""
    return agent.expect(lambda e: "advertiser" in e, "the advertiser's settled state")


def mosquitto_on_all_addresses(host: netlab.Host, workdir: Path) -> contextlib.AbstractContextManager[Any]:
    """The hub's Mosquitto as `hearth broker config` sets it up: listening on every address (the agent
    itself uses 127.0.0.1), plain and anonymous here (TLS and ACLs have their own tests)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {PORT}\nallow_anonymous true\nlog_dest none\n")
    return netlab.process_in(host, shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf))


def household(tmp_path: Path, devices: dict[str, str]) -> tuple[str, dict[str, Path]]:
    """Homes for ``devices`` (name -> profile; the first is the hub holding the root) and the id."""
    homes = {name: tmp_path / name for name in devices}
    hub = next(iter(devices))
    for name, profile in devices.items():
        provision(homes[hub], homes[name], name, profile)
    return HouseholdState(homes[hub]).membership()[0].household_id, homes


@needs_netns
def test_a_hub_advertises_its_household_and_says_goodbye_on_shutdown(tmp_path: Path) -> None:
    hh, homes = household(tmp_path, {"hub": "hub"})
    with netlab.lan(["hub", "ha"]) as hosts, contextlib.ExitStack() as stack:
        hub, ha = hosts["hub"], hosts["ha"]
        stack.enter_context(mosquitto_on_all_addresses(hub, tmp_path / "mq"))
        netlab.wait_for_port(hub, "127.0.0.1", PORT)
        browser = stack.enter_context(lab(ha, "browse", "--ip", ha.ip))
        browser.expect(lambda e: e.get("event") == "ready", "browser ready")

        agent = stack.enter_context(
            run_agent(hub, homes["hub"], agent_config("hub", "hub", f"mqtt://127.0.0.1:{PORT}", None))
        )
        state = settled(agent)
        name = f"hub ({hh[:8]}).{SERVICE_TYPE}"
        assert state == {
            "advertiser": "advertising",
            "reason": "",
            "name": name,
            "household": hh,
            "running": "running",
        }

        seen = browser.expect(lambda e: e.get("event") == "resolved", "the advert, resolved")
        assert seen["name"] == name and seen["port"] == PORT and seen["addresses"] == [hub.ip]
        expected = {"v": "1", "hh": hh, "broker": f"mqtt://{hub.ip}:{PORT}", "name": "hub", "class": "hub"}
        assert seen["properties"] == expected  # exactly the contract: nothing else, nothing secret
        advert = HouseholdAdvert.parse(seen["properties"])
        assert advert.names_instance(seen["name"]) and advert.device_class == "hub"
        netlab.wait_for_port(ha, *advert.broker_host_port)  # Home Assistant reaches the broker it was told of
        assert [e["event"] for e in browser.events] == ["ready", "found", "resolved"]

        agent.say("quit")
        closed = agent.expect(lambda e: e.get("closed") is True, "the agent's shutdown")
        assert closed["advertiser"] == "closed"
        browser.expect(lambda e: e.get("event") == "removed", "the goodbye")
        assert browser.events[-1] == {"event": "removed", "name": name}


@needs_netns
def test_off_and_non_hubs_advertise_nothing_and_on_advertises_any_class_at_its_own_address(
    tmp_path: Path,
) -> None:
    """hub with "off" and fridge (appliance) with "auto" settle first; then a laptop with "on" (its
    broker on the hub's host) advertises: it is the only service the browser ever sees."""
    hh, homes = household(tmp_path, {"hub": "hub", "fridge": "fridge-panel", "laptop": "laptop"})
    with netlab.lan(["hub", "fridge", "laptop", "ha"]) as hosts, contextlib.ExitStack() as stack:
        hub, ha = hosts["hub"], hosts["ha"]
        stack.enter_context(mosquitto_on_all_addresses(hub, tmp_path / "mq"))
        netlab.wait_for_port(hub, "127.0.0.1", PORT)
        for name in ("fridge", "laptop"):
            netlab.wait_for_port(hosts[name], hub.ip, PORT)
        browser = stack.enter_context(lab(ha, "browse", "--ip", ha.ip))
        browser.expect(lambda e: e.get("event") == "ready", "browser ready")

        here, there = f"mqtt://127.0.0.1:{PORT}", f"mqtt://{hub.ip}:{PORT}"
        silent = [
            stack.enter_context(run_agent(hub, homes["hub"], agent_config("hub", "hub", here, "off"))),
            stack.enter_context(
                run_agent(
                    hosts["fridge"], homes["fridge"], agent_config("fridge", "fridge-panel", there, None)
                )
            ),
        ]
        states = [settled(agent) for agent in silent]
        laptop_config = agent_config("laptop", "laptop", there, "on")
        laptop = stack.enter_context(run_agent(hosts["laptop"], homes["laptop"], laptop_config))
        assert settled(laptop)["advertiser"] == "advertising"

        seen = browser.expect(lambda e: e.get("event") == "resolved", "the laptop's advert")
        assert seen["name"] == f"laptop ({hh[:8]}).{SERVICE_TYPE}"
        assert seen["addresses"] == [hosts["laptop"].ip]  # its own address; the broker is the hub's
        expected = {"v": "1", "hh": hh, "broker": there, "name": "laptop", "class": "laptop"}
        assert HouseholdAdvert.parse(seen["properties"]).properties() == seen["properties"] == expected
        found = [e["name"] for e in browser.events if e.get("event") == "found"]
        assert found == [seen["name"]], f"something else advertised: {browser.events}"
        assert [(s["advertiser"], s["name"], s["running"]) for s in states] == [
            ("disabled", None, "running")
        ] * 2
        assert [s["reason"] for s in states] == [
            "[mesh] advertise = off",
            '[mesh] advertise = "auto" (hub class only); this device is appliance',
        ]


@needs_netns
def test_a_failure_to_advertise_is_one_warning_and_the_agent_runs_on(tmp_path: Path) -> None:
    """A hub whose only interface is down (no LAN to advertise on), its Mosquitto on the same host:
    the advert fails, the agent serves the household anyway."""
    _, homes = household(tmp_path, {"hub": "hub"})
    with netlab.lan(["hub"]) as hosts:
        hub = hosts["hub"]
        veth = hub.run("ip", "-o", "link", "show", "type", "veth").stdout.split(":")[1].strip().split("@")[0]
        hub.run("ip", "link", "set", veth, "down")
        config = agent_config("hub", "hub", f"mqtt://127.0.0.1:{PORT}", "auto")
        with mosquitto_on_all_addresses(hub, tmp_path / "mq"), run_agent(hub, homes["hub"], config) as agent:
            state = settled(agent)
            assert state["advertiser"] == "failed" and state["running"] == "running"
            assert "no LAN address" in state["reason"]
            agent.say("quit")
            agent.expect(lambda e: e.get("closed") is True, "the agent's shutdown")
        warnings = [line.strip() for line in agent.seen if line.startswith("WARNING")]
        prefix = (
            "WARNING edge_agent.discovery.advertiser: not advertising the household on the LAN (zeroconf)"
        )
        assert warnings == [f"{prefix}: {state['reason']}"]


@needs_netns
def test_a_name_already_answered_on_the_lan_is_one_warning_not_a_renamed_advert(tmp_path: Path) -> None:
    """Two devices of one household both called "hub": the second's probe meets the first's answer,
    so it does not advertise (a renamed "hub (…)-2" would break the contract) and runs on."""
    hh, homes = household(tmp_path, {"hub": "hub"})
    homes["twin"] = tmp_path / "twin"
    provision(homes["hub"], homes["twin"], "hub", "hub")  # certified under the same name
    with netlab.lan(["hub", "twin"]) as hosts, contextlib.ExitStack() as stack:
        hub, twin = hosts["hub"], hosts["twin"]
        stack.enter_context(mosquitto_on_all_addresses(hub, tmp_path / "mq"))
        netlab.wait_for_port(twin, hub.ip, PORT)
        first = stack.enter_context(
            run_agent(hub, homes["hub"], agent_config("hub", "hub", f"mqtt://127.0.0.1:{PORT}", None))
        )
        assert settled(first)["name"] == f"hub ({hh[:8]}).{SERVICE_TYPE}"
        second = stack.enter_context(
            run_agent(twin, homes["twin"], agent_config("hub", "hub", f"mqtt://{hub.ip}:{PORT}", None))
        )
        state = settled(second)
        assert (state["advertiser"], state["running"]) == ("failed", "running")
        assert state["reason"].startswith("NonUniqueNameException")
        assert sum(line.startswith("WARNING edge_agent.discovery") for line in second.seen) == 1


async def test_a_hub_on_the_embedded_broker_does_not_advertise_it() -> None:
    """The embedded broker listens on loopback only: announcing it would send Home Assistant to an
    address that refuses it, so nothing is advertised, and the reason says so."""
    from edge_agent.discovery.advertiser import AdvertiserState, HouseholdAdvertiser

    source = AdvertSource(household_id="0123456789abcdef", device_name="hub", device_class="hub",
                          broker="mqtt://127.0.0.1:1883")  # fmt: skip
    async with HouseholdAdvertiser(source, "auto", loopback_only=True) as advertiser:
        assert await advertiser.settled() is AdvertiserState.DISABLED
        assert advertiser.reason.startswith("the embedded broker listens on loopback only")
        assert advertiser.info is None
