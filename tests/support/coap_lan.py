"""A household of `hearth run` agents in network namespaces on one bridge, reaching each other over CoAP
(issue 24), for tests/test_netns_coap.py: per-host config files, the agents started together and each
stopped by its PID, their running view and requests through each agent's local socket (what `hearth
chat` and `hearth peers` use), and a cut of whichever device serves a request, placed by packets.

The cut (`FirstServerCut`) is an nftables ruleset in the LAN's switch: it reads only the CoAP header
(OSCORE messages are opaque), so it counts messages, not words. It arms when the requester sends its
request (an OSCORE POST larger than any ping), lets the server's next two OSCORE POSTs through (the
stream's ``accepted`` and its first chunk), and from the third on drops everything between that server
and the requester, both ways: the server goes dark one chunk into its answer, whatever the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.rigs import netlab
from edge_agent.client.schemas import GenerateRequest
from edge_agent.errors import HearthError
from edge_agent.facade import PeersReport
from edge_agent.hearth import SOCKET_NAME
from edge_agent.local_api import LocalClient

COAP_PORT = 5683

CAR_PROFILE = """\
# The car's head unit for these tests: its real hardware, serving generate with the int4 LLM (the
# hub's pack), so an answer resumed there reads exactly as the hub's would.
id: car-int4
display_name: Car head unit (int4 LLM, serves generate)
device_class: vehicle
cpu: {arch: arm64, model: Kryo 485, cores: 8, clock_ghz: 2.4, isa: [neon, dotprod, fp16]}
ram_mb: 4096
storage: {kind: ufs, size_gb: 64}
execution_providers: [CPUExecutionProvider]
power: vehicle
model_ram_share: 0.2
threads: 4
quantizations: [int4]
serves: [generate]
"""


FRIDGE_PROFILE = """\
# A fridge door panel with room for the small LLM (a 2 GB board): it asks the household first, and
# answers by itself when no device can ([routing] mode = "offload-first"). The int4 pack, as the hub's.
id: fridge-llm
display_name: Fridge door panel (2 GB, int4 LLM as a last resort)
device_class: appliance
cpu: {arch: arm64, model: Cortex-A55, cores: 4, clock_ghz: 1.8, isa: [neon, dotprod]}
ram_mb: 2048
storage: {kind: emmc, size_gb: 16}
execution_providers: [CPUExecutionProvider]
power: mains
model_ram_share: 0.2
threads: 2
quantizations: [int4]
serves: []
task_ram_mb: {transcribe: 96}  # speech goes to the hub, as on the real panel
"""


def car_profile(directory: Path) -> Path:
    path = directory / "car-int4.yaml"
    path.write_text(CAR_PROFILE)
    return path


def fridge_profile(directory: Path) -> Path:
    path = directory / "fridge-llm.yaml"
    path.write_text(FRIDGE_PROFILE)
    return path


def write_config(
    path: Path,
    name: str,
    profile: str | Path,
    state: Path,
    *,
    transports: tuple[str, ...] = ("coap",),
    broker: str | None = None,
    routing: dict[str, object] | None = None,
) -> Path:
    """An agent's config: ``[mesh] transports`` as given; CoAP on the default port, found by multicast
    only (no ``peers`` seeds, no mDNS); a broker only when MQTT is one of the transports. Adverts every
    5 s (the default): a peer counts as gone after 15 s without one, which a lossy link's fetches of
    adverts make in time (with 1 s, a peer streaming an answer could age out between two fetches)."""
    lines = [
        "[agent]", f'name = "{name}"', f'profile = "{profile}"', "",
        "[engines]", "threads = 1", "",
        "[mesh]", "enabled = true", f"transports = {list(transports)!r}".replace("'", '"'),
        "embedded_broker = false", f'state_dir = "{state}"',
        *([f'broker = "{broker}"'] if broker else []), "",
        "[mesh.coap]", "multicast = true", "zeroconf = false", "",
        # Direct TLS links on (the default): with no broker they listen where CoAP is announced.
        "[updates]", "direct = true", "",
        "[routing]", *(f"{k} = {v!r}".replace("'", '"') for k, v in (routing or {}).items()), "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))
    return path


@dataclass
class Agent:
    """One `hearth run` in its namespace; its output is read all along (kept for failure messages, and
    so a chatty agent never blocks on a full pipe)."""

    name: str
    host: netlab.Host
    config: Path
    state: Path
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def client(self) -> LocalClient:
        return LocalClient(self.state / SOCKET_NAME)

    def output(self) -> str:
        return "".join(self.lines[-200:])

    def start_reading(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def read() -> None:
            with contextlib.suppress(ValueError, OSError):  # closed at teardown
                for line in stdout:
                    self.lines.append(line)

        self.reader = threading.Thread(target=read, name=f"agent-output-{self.name}", daemon=True)
        self.reader.start()


@contextlib.contextmanager
def agents(
    specs: dict[str, tuple[netlab.Host, Path, Path]], env: dict[str, str]
) -> Iterator[dict[str, Agent]]:
    """Start an agent per ``name: (host, config, state dir)``, all at once; yield once each serves."""
    with contextlib.ExitStack() as stack:
        running: dict[str, Agent] = {}
        for name, (host, config, state) in specs.items():
            proc = stack.enter_context(
                netlab.process_in(host, netlab.HEARTH, "run", "--config", str(config), env=env)
            )
            running[name] = Agent(name, host, config, state, proc)
        for agent in running.values():
            agent.lines += netlab.wait_for_line(agent.proc, "serving")
            agent.start_reading()
        try:
            yield running
        finally:
            stack.close()  # every agent stopped by its PID: their output ends, and so do the readers
            for agent in running.values():
                if agent.reader is not None:
                    agent.reader.join(timeout=10)


def lan_device(host: netlab.Host) -> str:
    """The host's interface on the LAN (the namespace's one besides lo)."""
    (dev,) = [d for d in host.run("ls", "/sys/class/net").stdout.split() if d != "lo"]
    return dev


async def peers_of(agent: Agent) -> PeersReport:
    return await agent.client.peers()


async def until_peers(agent: Agent, names: set[str], timeout: float = 30.0) -> PeersReport:
    """The agent's peers report once it lists exactly ``names`` (polled on its local socket)."""
    end = time.monotonic() + timeout
    while True:
        report = await peers_of(agent)
        if {p.name for p in report.peers} == names:
            return report
        if time.monotonic() > end:
            heard = sorted(p.name for p in report.peers)
            raise AssertionError(f"{agent.name} heard {heard}, not {sorted(names)}:\n{agent.output()}")
        await asyncio.sleep(0.1)


@dataclass
class Answer:
    text: str
    chunks: list[str]
    served_by: str
    hops: str
    """Who served which part, as `hearth chat` prints it: "hub (failed: why) → car"."""
    failovers: int
    seconds: float

    def attempts(self) -> list[tuple[str, bool]]:
        """(device, failed) per attempt, from ``hops`` ("fridge (local)" is the fridge)."""
        return [(hop.split(" ", 1)[0], " (failed: " in hop) for hop in self.hops.split(" → ")]

    def devices(self) -> list[str]:
        """The devices in the order they served, each once per turn (a path change on the same device,
        OSCORE then its transport, is one turn)."""
        names = [name for name, _ in self.attempts()]
        return [name for i, name in enumerate(names) if i == 0 or name != names[i - 1]]


async def ask(agent: Agent, prompt: str, max_tokens: int, *, on_first_chunk: object = None) -> Answer:
    """Ask ``agent`` (as `hearth chat` does, through its local socket) for a greedy answer; calls
    ``on_first_chunk()`` when the first text arrives."""
    client = agent.client
    await client.wait_for_peers("generate", 3.0)
    request = GenerateRequest.from_prompt(prompt, max_tokens=max_tokens)
    t0 = time.monotonic()
    answer = client.generate(request)
    chunks: list[str] = []
    try:
        async for chunk in answer:
            if chunk.text:
                if not chunks and callable(on_first_chunk):
                    on_first_chunk()
                chunks.append(chunk.text)
    except HearthError as exc:
        raise AssertionError(f"{agent.name}'s request failed: {exc}\n{agent.output()}") from exc
    took = time.monotonic() - t0
    return Answer("".join(chunks), chunks, answer.served_by, answer.hops, answer.failovers, took)


class FirstServerCut:
    """Cut whichever device serves ``requester``'s next request, one chunk into its answer (see the
    module's docstring): nftables in the switch of ``hosts``, removed by `remove`."""

    TABLE = "hearth_cut"

    def __init__(self, hosts: dict[str, netlab.Host], requester: str) -> None:
        self.hosts = hosts
        self.switch = netlab.switch_of(hosts)
        ip = hosts[requester].ip
        oscore = [self._oscore_post(8)]
        stages = [
            f"ip saddr @cut ip daddr {ip} counter drop",
            f"ip saddr {ip} ip daddr @cut counter drop",
            *(f"ip saddr {ip} udp length >= 400 {m} add @armed {{ ip daddr }} accept" for m in oscore),
            *(f"ip daddr {ip} ip saddr @s2 {m} add @cut {{ ip saddr }} counter drop" for m in oscore),
            *(f"ip daddr {ip} ip saddr @s1 {m} add @s2 {{ ip saddr }} accept" for m in oscore),
            *(f"ip daddr {ip} ip saddr @armed {m} add @s1 {{ ip saddr }} accept" for m in oscore),
        ]
        sets = "".join(
            f"  set {name} {{ type ipv4_addr; size 1; flags dynamic; }}\n"
            for name in ("armed", "s1", "s2", "cut")
        )
        rules = "".join(f"    {rule}\n" for rule in stages)
        self.switch.run("nft", "-f", "-", stdin=(
            f"table bridge {self.TABLE} {{\n{sets}"
            "  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
            f"{rules}  }}\n}}\n"
        ))  # fmt: skip

    @staticmethod
    def _oscore_post(tkl: int) -> str:
        """A confirmable CoAP POST (RFC 7252 header: version 1, type CON, token length ``tkl``, code
        0.02) whose first option is OSCORE (delta 9): a Hearth message, not a hello or a sealed frame.
        The message lane's tokens are 8 bytes long."""
        option_bits = 64 + 8 * (4 + tkl)  # the UDP header, CoAP's 4 bytes, the token
        return f"meta l4proto udp @th,64,8 {0x40 | tkl:#x} @th,72,8 0x2 @th,{option_bits},4 0x9"

    def _members(self, name: str) -> list[str]:
        listing = self.switch.run("nft", "list", "set", "bridge", self.TABLE, name).stdout
        found = re.search(r"elements = \{([^}]*)\}", listing)
        return [e.strip() for e in found.group(1).split(",")] if found else []

    def name_of(self, ip: str) -> str:
        return next(name for name, host in self.hosts.items() if host.ip == ip)

    def armed(self) -> str | None:
        """The device the request went to (None before it left)."""
        found = self._members("armed")
        return self.name_of(found[0]) if found else None

    def cut(self) -> str | None:
        """The device cut off (None if the answer ended before its third message)."""
        found = self._members("cut")
        return self.name_of(found[0]) if found else None

    def dropped(self) -> int:
        listing = self.switch.run("nft", "list", "table", "bridge", self.TABLE).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))

    def remove(self) -> None:
        subprocess.run(self.switch.cmd("nft", "delete", "table", "bridge", self.TABLE), capture_output=True)
