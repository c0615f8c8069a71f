"""Two hosts on one machine for multi-host tests: network namespaces joined by a veth pair, packet loss
with nftables (``numgen random``), processes started inside a namespace and stopped by their PID.

Needs root (CAP_NET_ADMIN), iproute2 and nftables (``make system-deps`` installs both). Traffic stays
between the two namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent import processes


@dataclass(frozen=True)
class Host:
    ns: str
    ip: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), input=stdin, capture_output=True, text=True, check=True)


def available() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make system-deps)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Hosts a (x.x.x.1) and b (x.x.x.2) on a private /24, removed again on exit."""
    tag = secrets.token_hex(3)
    net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    a, b = Host(f"hearth-{tag}-a", f"{net}.1"), Host(f"hearth-{tag}-b", f"{net}.2")
    veth = (f"hv{tag}a", f"hv{tag}b")
    try:
        for host in (a, b):
            _ip("netns", "add", host.ns)
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for host, dev in zip((a, b), veth, strict=True):
            _ip("link", "set", dev, "netns", host.ns)
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", dev)
            _ip("-n", host.ns, "link", "set", dev, "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for host in (a, b):  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)


@contextlib.contextmanager
def lan(names: list[str]) -> Iterator[dict[str, Host]]:
    """One namespace per name on a private /24, all joined by a bridge in a switch namespace of their
    own (so per-host link caps can be set where a Wi-Fi access point would apply them), removed on exit."""
    tag = secrets.token_hex(3)
    net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    switch = f"hearth-{tag}-sw"
    hosts = {name: Host(f"hearth-{tag}-{i}", f"{net}.{i + 1}") for i, name in enumerate(names)}
    try:
        _ip("netns", "add", switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(hosts.values()):
            _ip("netns", "add", host.ns)
            near, far = f"hv{tag}{i}", f"port{i}"
            _ip("link", "add", near, "type", "veth", "peer", "name", far)
            _ip("link", "set", near, "netns", host.ns)
            _ip("link", "set", far, "netns", switch)
            _ip("-n", switch, "link", "set", far, "master", "br0")
            _ip("-n", switch, "link", "set", far, "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", near)
            _ip("-n", host.ns, "link", "set", near, "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts.values():
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", switch], capture_output=True)


@dataclass(frozen=True)
class Link:
    """A second network between two hosts (a second veth pair on its own /24)."""

    a_ip: str
    b_ip: str
    a_dev: str
    b_dev: str


def add_link(a: Host, b: Host) -> Link:
    """Join ``a`` and ``b`` by another veth pair on a /24 of its own (removed with the namespaces): a
    path that can be cut while their first network (the broker's) stays up."""
    tag = secrets.token_hex(3)
    net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    link = Link(f"{net}.1", f"{net}.2", f"hl{tag}a", f"hl{tag}b")
    _ip("link", "add", link.a_dev, "type", "veth", "peer", "name", link.b_dev)
    for host, dev, ip in ((a, link.a_dev, link.a_ip), (b, link.b_dev, link.b_ip)):
        _ip("link", "set", dev, "netns", host.ns)
        _ip("-n", host.ns, "addr", "add", f"{ip}/24", "dev", dev)
        _ip("-n", host.ns, "link", "set", dev, "up")
    return link


def set_link(host: Host, dev: str, up: bool) -> None:
    """``ip link set DEV up|down`` inside ``host``: down, its network's route is gone at once."""
    _ip("-n", host.ns, "link", "set", dev, "up" if up else "down")


def link_bytes(host: Host, dev: str) -> int:
    """Bytes ``host`` received on ``dev`` so far."""
    return int(host.run("cat", f"/sys/class/net/{dev}/statistics/rx_bytes").stdout)


def go_silent_after(host: Host, daddr: str, sport: int, nbytes: int) -> None:
    """From the next ``nbytes`` bytes on, drop every packet ``host`` sends from TCP port ``sport`` to
    ``daddr``: a link that goes silent mid-stream (no FIN, no RST), at a point set by bytes, not time."""
    host.run("nft", "-f", "-", stdin=(
        "table inet hearth_cut {\n"
        "  chain output {\n    type filter hook output priority 0; policy accept;\n"
        f"    ip daddr {daddr} tcp sport {sport} quota over {nbytes} bytes counter drop\n  }}\n"
        "}\n"
    ))  # fmt: skip


def cut_packets(host: Host) -> int:
    """Packets `go_silent_after` dropped so far."""
    listing = host.run("nft", "list", "table", "inet", "hearth_cut").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


def switch_of(hosts: dict[str, Host]) -> Host:
    """The switch namespace of a `lan` (where its bridge and the hosts' far veth ends live)."""
    first = next(iter(hosts.values()))
    return Host(first.ns.rsplit("-", 1)[0] + "-sw", "")


def cap_uplinks(hosts: dict[str, Host], mbytes_per_s: float) -> None:
    """Police what each host of a `lan` sends to ``mbytes_per_s`` (an nft rate limit on the bridge,
    per switch port: a home device's Wi-Fi uplink). Excess packets are dropped, as a full radio queue
    would; TCP backs off as it does at home."""
    switch = switch_of(hosts)
    rate = f"{int(mbytes_per_s * 1024)} kbytes/second burst 256 kbytes"
    rules = "".join(f'    iifname "port{i}" limit rate over {rate} counter drop\n' for i in range(len(hosts)))
    switch.run("nft", "-f", "-", stdin=(
        "table bridge hearth_cap {\n"
        "  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
        f"{rules}  }}\n"
        "}\n"
    ))  # fmt: skip


def set_loss(host: Host, percent: int) -> None:
    """Drop ``percent`` % of the packets ``host`` sends and receives (replaces any earlier rule)."""
    subprocess.run(host.cmd("nft", "delete", "table", "inet", "hearth_loss"), capture_output=True)
    if percent <= 0:
        return
    rule = f"numgen random mod 100 < {percent} counter drop" if percent < 100 else "counter drop"
    host.run("nft", "-f", "-", stdin=(
        "table inet hearth_loss {\n"
        f"  chain input {{ type filter hook input priority 0; policy accept; {rule}; }}\n"
        f"  chain output {{ type filter hook output priority 0; policy accept; {rule}; }}\n"
        "}\n"
    ))  # fmt: skip


def dropped_packets(host: Host) -> int:
    listing = host.run("nft", "list", "table", "inet", "hearth_loss").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


@contextlib.contextmanager
def process_in(host: Host, *args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Start ``args`` inside ``host`` (``ip netns exec`` execs it, so the PID is the program's own);
    stop it by that PID on exit."""
    proc = subprocess.Popen(host.cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    try:
        yield proc
    finally:
        processes.stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_line(proc: subprocess.Popen[str], needle: str, limit: int = 2000) -> list[str]:
    """Read ``proc``'s output until a line contains ``needle``; all lines read so far."""
    assert proc.stdout is not None
    seen: list[str] = []
    for _ in range(limit):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited (code {proc.wait()}) before '{needle}':\n" + "".join(seen))
        seen.append(line)
        if needle in line:
            return seen
    raise RuntimeError(f"no '{needle}' in {limit} lines:\n" + "".join(seen))


def wait_for_port(client: Host, ip: str, port: int, timeout: float = 15.0) -> None:
    """Wait until ``client`` can open a TCP connection to ``ip``:``port``."""
    probe = (
        "import socket, sys, time\n"
        f"end = time.monotonic() + {timeout}\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        f"        socket.create_connection(('{ip}', {port}), timeout=0.5).close(); sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    if subprocess.run(client.cmd(sys.executable, "-c", probe)).returncode != 0:
        raise RuntimeError(f"{ip}:{port} not reachable from {client.ns} within {timeout:g} s")


def mosquitto_in(host: Host, workdir: Path, port: int = 1883) -> list[str]:
    """The command line for a Mosquitto listening on ``host``'s address (plain, anonymous: every
    payload is an envelope; the TLS + ACL setup has its own test)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} {host.ip}\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "log_dest none\n")  # fmt: skip
    return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]


HEARTH = str(Path(sys.executable).parent / "hearth")  # the CLI of the environment running the tests
