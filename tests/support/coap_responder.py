"""Processes for the CoAP discovery tests (tests/test_coap_discovery.py), each run inside a network namespace
(`benchmarks/rigs/netlab.py`) and stopped by its PID. Each prints one JSON line per event. Lines that start
with ``{`` are events, and log lines are not.

* ``serve --port P --interface IF [--other]``: an aiocoap server bound to the wildcard address, which joins
  All-CoAP-Nodes on ``IF`` and serves ``/.well-known/core`` and ``/hearth/presence`` (with ``--other``, a
  resource of another type instead). It prints ``ready`` once it is listening.
* ``probe --port P [--interface IF] [--ipv6] --timeout S``: one `discovery.probe`. It prints ``found``
  with the candidates, or ``error`` with the ProbeError's text.
* ``advertise --tag T --hh H --address A --port P``: a `CoapService`. It prints ``settled`` with its
  state. On SIGTERM it says goodbye and prints ``closed``.
* ``browse --hh H``: a `CoapBrowser` that prints ``ready`` and then ``candidates`` on every change. Its
  debug log names the instances it rejected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from aiocoap import GET, Context, Message, resource

from edge_agent.mesh.transports.coap import discovery
from edge_agent.mesh.transports.coap.dnssd import CoapBrowser, CoapService


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Presence(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: Message) -> Message:
        return Message(payload=b"signed advert goes here")


def on_sigterm() -> asyncio.Event:
    """An event SIGTERM sets: the process then ends cleanly (goodbyes sent) instead of dying on the spot."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def serve(port: int, interface: str, other: bool) -> None:
    if other:  # a CoAP device of another kind: a /.well-known/core without Hearth's resource type
        site = resource.Site()
        thing = Presence()
        thing.rt = "core.s"
        site.add_resource(("sensor",), thing)
        site.add_resource(discovery.WKC_PATH, discovery.wkc_resource(site))
    else:
        site = discovery.presence_site(Presence())
    stop = on_sigterm()
    context = await Context.create_server_context(
        site, bind=("::", port), transports=["udp6"], multicast=discovery.multicast_spec([interface])
    )
    emit(event="ready", port=port)
    try:
        await stop.wait()
    finally:
        await context.shutdown()


async def probe(port: int, interface: str | None, ipv6: bool, timeout: float, fetch: bool) -> None:
    try:
        found = await discovery.probe(port, timeout=timeout, interface=interface, ipv6=ipv6)
    except discovery.ProbeError as exc:
        emit(event="error", error=str(exc))
        return
    emit(event="found", candidates=found)
    if fetch:  # what the caller does next: a unicast GET of each candidate's presence resource
        client = await Context.create_client_context(transports=["udp6"])
        try:
            for host, port_ in found:
                where = f"[{host}]:{port_}" if ":" in host else f"{host}:{port_}"
                uri = f"coap://{where}/" + "/".join(discovery.PRESENCE_PATH)
                response = await client.request(Message(code=GET, uri=uri)).response
                emit(event="fetched", host=host, code=str(response.code), payload=response.payload.decode())
        finally:
            await client.shutdown()


async def advertise(tag: str, hh: str, address: str, port: int) -> None:
    stop = on_sigterm()
    async with CoapService(tag=tag, household_tag=hh, addresses=[address], port=port) as service:
        state = await service.settled()
        emit(event="settled", state=state.value, reason=service.reason)
        await stop.wait()
    emit(event="closed", state=service.state.value)


async def browse(hh: str) -> None:
    async with CoapBrowser(hh) as browser:
        emit(event="ready", state=(await browser.settled()).value)
        while True:
            if await browser.changed(3600):
                emit(event="candidates", candidates=browser.candidates())


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--interface", required=True)
    s.add_argument("--other", action="store_true")
    p = sub.add_parser("probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interface")
    p.add_argument("--ipv6", action="store_true")
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--fetch", action="store_true")
    a = sub.add_parser("advertise")
    a.add_argument("--tag", required=True)
    a.add_argument("--hh", required=True)
    a.add_argument("--address", required=True)
    a.add_argument("--port", type=int, required=True)
    b = sub.add_parser("browse")
    b.add_argument("--hh", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edge_agent.mesh.transports.coap").setLevel(logging.DEBUG)
    if args.cmd == "serve":
        asyncio.run(serve(args.port, args.interface, args.other))
    elif args.cmd == "probe":
        asyncio.run(probe(args.port, args.interface, args.ipv6, args.timeout, args.fetch))
    elif args.cmd == "advertise":
        asyncio.run(advertise(args.tag, args.hh, args.address, args.port))
    else:
        asyncio.run(browse(args.hh))


if __name__ == "__main__":
    main()
