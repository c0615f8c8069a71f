"""Broker-less discovery for the CoAP transport (issue 24): the All-CoAP-Nodes probe and the DNS-SD advert.

Both only find candidate addresses, which the caller verifies. The tests check that a probe finds exactly
the Hearth endpoints, and that what a stranger sends cannot add a candidate unless it is well-formed and
carries the probe's token. On loopback, a plain UDP socket impersonates responders: loopback cannot do
multicast, so the probe is aimed at 127.0.0.1. In network namespaces on one bridge, real aiocoap
responders answer a real group probe over IPv4 and IPv6. A CoAP device of another kind on that LAN
stays silent, and python-zeroconf carries the advert from one host to a browser on another. Each
process is stopped by its PID, and the waits are on events. The probe waits out its whole timeout and
the test then asserts on the set, so nothing depends on how fast a host answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiocoap
import pytest
from aiocoap import NON, Code, Message, resource
from aiocoap.numbers.contentformat import ContentFormat

from benchmarks.rigs import netlab
from edge_agent.mesh.transports.coap import discovery
from edge_agent.mesh.transports.coap.discovery import ProbeError, multicast_spec, presence_site, probe
from edge_agent.mesh.transports.coap.dnssd import CoapBrowser, CoapService, DnssdState, _host

SCRIPT = str(Path(__file__).parent / "support" / "coap_responder.py")
PORT = 5683
WAIT_S = 20.0
"""Bound on any one expected event."""
PRESENCE = b'</hearth/presence>;rt="hearth.presence"'


def needs_netns(test: Callable[..., None]) -> Callable[..., None]:
    unavailable = netlab.available()
    marked: Callable[..., None] = pytest.mark.slow(
        pytest.mark.skipif(unavailable is not None, reason=str(unavailable))(test)
    )
    return marked


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Presence(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: Message) -> Message:
        return Message(payload=b"advert")


# -- the pieces, no network -----------------------------------------------------------------------------


def test_multicast_spec_joins_both_all_coap_nodes_groups_per_interface() -> None:
    assert multicast_spec(["eth0", "wlan0"]) == [
        ("224.0.1.187", "eth0"),
        ("ff02::fd", "eth0"),
        ("224.0.1.187", "wlan0"),
        ("ff02::fd", "wlan0"),
    ]
    assert multicast_spec([]) == []


def test_the_presence_site_lists_its_resource_and_not_aiocoap() -> None:
    site = presence_site(Presence())
    links = str(site.get_resources_as_linkheader())
    assert '</hearth/presence>;rt="hearth.presence"' in links
    assert "impl-info" not in links and "aiocoap" not in links


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("192.168.1.5", "192.168.1.5"),
        ("fd00::5", "fd00::5"),
        ("fe80::1%1", "fe80::1%lo"),  # the zone by name, as aiocoap takes it in a URI
        ("fe80::1", None),  # link-local without a zone: unusable
        ("0.0.0.0", None),
        ("224.0.1.187", None),
        ("not-an-ip", None),
    ],
)
def test_dnssd_addresses_become_ip_literals(address: str, host: str | None) -> None:
    assert _host(address) == host


@pytest.mark.parametrize("tag", ["", "ABC", "a" * 33, "house hold", "ä"])
def test_dnssd_tags_are_short_lowercase_alphanumerics(tag: str) -> None:
    with pytest.raises(ValueError, match="1 to 32 of 0-9 a-z"):
        CoapService(tag=tag, household_tag="aaaa", addresses=["192.0.2.1"], port=PORT)
    with pytest.raises(ValueError, match="1 to 32 of 0-9 a-z"):
        CoapBrowser(tag)


async def test_probe_says_what_it_could_not_do() -> None:
    with pytest.raises(ProbeError) as failed:
        await probe(PORT, timeout=1.0, interface="hearth-nope0")
    assert str(failed.value) == "no network interface named 'hearth-nope0': no interface with this name"
    assert isinstance(failed.value, OSError)
    with pytest.raises(ValueError):
        await probe(0, timeout=1.0)
    with pytest.raises(ValueError):
        await probe(PORT, timeout=0)


def test_the_mesh_library_imports_discovery_without_python_zeroconf() -> None:
    """python-zeroconf comes with the agent extra; a client-only install imports these modules without it."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'zeroconf', 'ifaddr'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edge_agent.mesh.transports.coap import discovery, dnssd\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


# -- the probe on loopback --------------------------------------------------------------------------------


def answer(
    token: bytes,
    payload: bytes = PRESENCE,
    code: Code = Code.CONTENT,
    content_format: int = ContentFormat.LINKFORMAT,
) -> bytes:
    message = Message(code=code, payload=payload)
    message.mtype, message.mid, message.token = NON, 7, token
    message.opt.content_format = content_format
    return bytes(message.encode())


class Impersonator(asyncio.DatagramProtocol):
    """The "group": it receives the probe and answers it from many sockets, each with other bytes. Its
    own socket sends the last answer."""

    def __init__(self, plan: Callable[[bytes], list[tuple[socket.socket, bytes]]]) -> None:
        self.plan = plan
        self.probes: list[Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = Message.decode(data)
        self.probes.append(request)
        for sock, payload in self.plan(request.token):
            sock.sendto(payload, addr)
        self.transport.sendto(answer(request.token), addr)


async def test_probe_returns_only_well_formed_answers_to_its_own_token() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(9)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    good, *bad = socks
    good_port = good.getsockname()[1]

    def plan(token: bytes) -> list[tuple[socket.socket, bytes]]:
        other = bytes(b ^ 0xFF for b in token)
        return [
            (good, answer(token)),
            (good, answer(token)),  # a second copy: one candidate
            (bad[0], answer(other)),  # another probe's answer
            (bad[1], b"\x00garbage\xff" * 3),
            (bad[2], token + b"not coap either"),
            (bad[3], answer(token, b'</sensor>;rt="core.s"')),  # a CoAP device of another kind
            (bad[4], answer(token, b"", code=Code.NOT_FOUND)),
            (bad[5], answer(token, PRESENCE + b"," + b"<" + b"x" * 700 + b">")),  # over max_datagram
            (bad[6], answer(token, PRESENCE, content_format=ContentFormat.TEXT)),
            (bad[7], answer(token, b'</hearth/presence>;rt="hearth.other"')),
        ]

    loop = asyncio.get_running_loop()
    transport, fake = await loop.create_datagram_endpoint(
        lambda: Impersonator(plan), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        found = await probe(port, timeout=1.0, group="127.0.0.1", max_datagram=600)
        first = await probe(port, timeout=30.0, group="127.0.0.1", max_responders=1)  # returns at once
    finally:
        transport.close()
        for s in socks:
            s.close()
    assert sorted(found) == sorted([("127.0.0.1", good_port), ("127.0.0.1", port)])
    assert len(first) == 1
    request = fake.probes[0]
    assert request.mtype == NON and request.code == aiocoap.GET and len(request.token) == 8
    assert request.opt.uri_path == (".well-known", "core") and request.opt.uri_query == (
        "rt=hearth.presence",
    )
    assert fake.probes[1].token != request.token


async def test_probe_finds_an_aiocoap_presence_site_and_not_another_kind_of_site() -> None:
    """Over unicast, aiocoap answers a query that matches nothing with an empty 2.05 (it is silent only to
    multicast, which the namespace test shows). The probe ignores that answer because it lists nothing."""
    other = resource.Site()
    sensor = Presence()
    sensor.rt = "core.s"
    other.add_resource(("sensor",), sensor)
    other.add_resource(discovery.WKC_PATH, discovery.wkc_resource(other))
    found = []
    for site in (presence_site(Presence()), other):
        port = _free_udp_port()
        server = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", port), transports=["udp6"]
        )
        try:
            found.append(await probe(port, timeout=1.0, group="127.0.0.1"))
        finally:
            await server.shutdown()
    assert found == [[("127.0.0.1", found[0][0][1])], []]


# -- CoapService, no LAN ----------------------------------------------------------------------------------


async def test_a_service_that_cannot_advertise_logs_one_warning_and_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An address this host does not hold (a LAN that went away): python-zeroconf cannot join mDNS there.
    Nothing is sent."""
    caplog.set_level(logging.WARNING)
    service = CoapService(tag="f1", household_tag="aaaa", addresses=["192.0.2.77"], port=PORT)
    async with service:
        assert await service.settled() is DnssdState.FAILED
        assert service.info is None and service.reason
    assert service.state is DnssdState.CLOSED
    mine = [r for r in caplog.records if r.name.startswith("edge_agent.mesh.transports.coap")]
    assert [(r.levelname, r.getMessage()) for r in mine] == [
        ("WARNING", f"no CoAP endpoint advert on the LAN (zeroconf): {service.reason}")
    ]
    with pytest.raises(RuntimeError, match="is closed; make a new one"):
        await service.__aenter__()


# -- real multicast between namespaces ----------------------------------------------------------------


class Output:
    """A namespace process's output, read without a thread and with a bound on every wait."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd = proc, proc.stdout.fileno()  # read raw: the text wrapper is never used
        self.lines: list[str] = []
        self._tail = b""

    def line(self, match: Callable[[str], bool], what: str) -> str:
        """The first line so far or to come that ``match``es."""
        seen, end = 0, time.monotonic() + WAIT_S
        while True:
            for line in self.lines[seen:]:
                if match(line):
                    return line
            seen = len(self.lines)
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no {what} within {WAIT_S:g} s:\n" + "\n".join(self.lines))
            data = os.read(self.fd, 65536)
            if not data:
                raise AssertionError(f"exited ({self.proc.wait()}) before {what}:\n" + "\n".join(self.lines))
            *done, self._tail = (self._tail + data).split(b"\n")
            self.lines += [d.decode(errors="replace") for d in done]

    def event(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        line = self.line(lambda s: s.startswith("{") and match(json.loads(s)), what)
        found: dict[str, Any] = json.loads(line)
        return found


def lab(*args: str) -> list[str]:
    return [sys.executable, SCRIPT, *args]


def veth(host: netlab.Host) -> str:
    return host.run("ip", "-o", "link", "show", "type", "veth").stdout.split(":")[1].strip().split("@")[0]


def link_local(host: netlab.Host) -> str:
    """``host``'s IPv6 link-local address, once duplicate address detection has finished (before that
    the kernel refuses to send from it)."""
    end = time.monotonic() + WAIT_S
    while host.run("ip", "-6", "addr", "show", "tentative").stdout.strip():
        assert time.monotonic() < end, f"IPv6 DAD did not finish in {host.ns}"
        time.sleep(0.05)
    found = re.search(
        r"inet6 (fe80::[0-9a-f:]+)/64", host.run("ip", "-6", "addr", "show", "scope", "link").stdout
    )
    assert found, host.run("ip", "-6", "addr").stdout
    return found.group(1)


def run_probe(host: netlab.Host, *args: str) -> tuple[list[dict[str, Any]], str]:
    """One probe in ``host`` (``--fetch``: then a unicast GET of each candidate): its events, its log."""
    done = subprocess.run(host.cmd(*lab("probe", "--port", str(PORT), "--timeout", "1", *args)),
                          capture_output=True, text=True, timeout=WAIT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


@needs_netns
def test_a_group_probe_finds_exactly_the_hearth_endpoints_on_the_lan() -> None:
    """fridge and car serve Hearth's presence. The tv is a CoAP device of another kind in the group,
    and it stays silent: the probe reports no datagram ignored. The hub probes over IPv4 and IPv6, then
    GETs each candidate by unicast at the address the probe returned."""
    env = dict(os.environ, AIOCOAP_REUSE_PORT="0")  # a second server on the port fails instead of sharing
    with netlab.lan(["fridge", "car", "tv", "hub"]) as hosts, contextlib.ExitStack() as stack:
        fridge, car, tv, hub = hosts.values()
        for host, extra in ((fridge, []), (car, []), (tv, ["--other"])):
            serving = lab("serve", "--port", str(PORT), "--interface", veth(host), *extra)
            proc = stack.enter_context(netlab.process_in(host, *serving, env=env))
            Output(proc).event(lambda e: e.get("event") == "ready", "responder ready")

        events, log = run_probe(hub, "--interface", veth(hub), "--fetch")
        assert events[0]["event"] == "found"
        assert sorted(map(tuple, events[0]["candidates"])) == sorted([(fridge.ip, PORT), (car.ip, PORT)])
        assert "2 responders, 0 datagrams ignored" in log  # the tv's WKCResource stayed silent
        fetched = {(e["host"], e["code"], e["payload"]) for e in events[1:]}
        assert fetched == {(ip, "2.05 Content", "signed advert goes here") for ip in (fridge.ip, car.ip)}

        # No interface named, no default route: the kernel has no way to the group, and says so.
        events, _ = run_probe(hub)
        assert events == [
            {
                "event": "error",
                "error": "[Errno 101] cannot send the CoAP probe to 224.0.1.187 port 5683: "
                "Network is unreachable",
            }
        ]

        lls = [link_local(h) for h in (fridge, car, tv, hub)]
        events, log = run_probe(hub, "--interface", veth(hub), "--ipv6", "--fetch")
        zone = veth(hub)
        assert sorted(map(tuple, events[0]["candidates"])) == sorted(
            [(f"{lls[0]}%{zone}", PORT), (f"{lls[1]}%{zone}", PORT)]
        )
        assert "2 responders, 0 datagrams ignored" in log
        assert {(e["host"], e["code"]) for e in events[1:]} == {
            (f"{ll}%{zone}", "2.05 Content") for ll in lls[:2]
        }


@needs_netns
def test_a_browser_finds_its_households_coap_endpoint_and_sees_it_go() -> None:
    """fridge advertises household tag aaaa and car advertises bbbb. The hub's browser for aaaa lists
    the fridge, rejects the car for its tag, and drops the fridge on its goodbye."""
    with netlab.lan(["fridge", "car", "hub"]) as hosts:
        fridge, car, hub = hosts.values()
        with netlab.process_in(hub, *lab("browse", "--hh", "aaaa")) as browsing:
            browser = Output(browsing)
            assert browser.event(lambda e: e.get("event") == "ready", "browser ready")["state"] == "running"
            with (
                netlab.process_in(fridge, *lab("advertise", "--tag", "f1", "--hh", "aaaa", "--address",
                                                fridge.ip, "--port", str(PORT))) as f,
                netlab.process_in(car, *lab("advertise", "--tag", "c1", "--hh", "bbbb", "--address", car.ip,
                                             "--port", str(PORT))) as c,
            ):  # fmt: skip
                fridge_out = Output(f)
                for out in (fridge_out, Output(c)):
                    settled = out.event(lambda e: e.get("event") == "settled", "advert settled")
                    assert settled["state"] == "running"
                seen = browser.event(lambda e: e.get("event") == "candidates", "the fridge's candidate")
                assert seen["candidates"] == [[fridge.ip, PORT]]
                rejected = "hearth-c1._hearth-coap._udp.local. is not this household's"
                browser.line(lambda s: rejected in s, "the car's advert rejected")
                f.terminate()  # SIGTERM: the advertiser says goodbye on its way out
                assert fridge_out.event(lambda e: e.get("event") == "closed", "goodbye")["state"] == "closed"
                gone = browser.event(lambda e: e.get("candidates") == [], "the fridge's goodbye")
                assert gone == {"event": "candidates", "candidates": []}
            events = [json.loads(s) for s in browser.lines if s.startswith("{")]
            assert all(e.get("candidates") in (None, [], [[fridge.ip, PORT]]) for e in events)
