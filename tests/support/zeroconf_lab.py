"""Processes for the zeroconf tests, each run inside a network namespace (`benchmarks/rigs/netlab.py`):

* ``browse --ip ADDR``: a python-zeroconf browser for ``_hearth._tcp.local.`` (what Home Assistant's
  zeroconf integration runs), printing one JSON line per event: ``found`` (the PTR arrived),
  ``resolved`` (SRV/TXT/A: name, port, addresses, TXT as sent) and ``removed`` (goodbye or expiry).
* ``agent --home DIR --config JSON``: a real serving agent (the `Hearth` façade, as `hearth run` runs
  it) printing its advertiser's settled state, then running until ``quit`` on stdin; ``closed`` once
  it has shut down (goodbyes sent).

JSON lines start with ``{``; log lines (stderr) do not. Both are stopped by their PID by the test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def browse(ip: str) -> None:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    from edge_agent.mesh.advertisement import SERVICE_TYPE

    aiozc = AsyncZeroconf(interfaces=[ip])
    pending: set[asyncio.Task[None]] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(aiozc.zeroconf, 5000):
            emit(event="unresolved", name=name)
            return
        props = {
            k.decode("latin-1"): None if v is None else v.decode("latin-1")
            for k, v in info.properties.items()
        }
        emit(event="resolved", name=name, port=info.port, server=info.server,
             addresses=info.parsed_addresses(), properties=props)  # fmt: skip

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            emit(event="removed", name=name)
            return
        emit(event="found" if state_change is ServiceStateChange.Added else "updated", name=name)
        task = asyncio.get_running_loop().create_task(resolve(name))
        pending.add(task)
        task.add_done_callback(pending.discard)

    await aiozc.zeroconf.async_wait_for_start()
    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    emit(event="ready")
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until quit or EOF
    finally:
        await browser.async_cancel()
        await aiozc.async_close()


async def agent(home: Path, config_json: str) -> None:
    from benchmarks.rigs.meshkit import service
    from edge_agent.config import AgentConfig
    from edge_agent.models.store import PackStore

    config = AgentConfig.model_validate(json.loads(config_json))
    async with service(home, config, PackStore()) as hearth:
        advertiser = hearth.advertiser
        state = None if advertiser is None else (await advertiser.settled()).value
        emit(
            advertiser=state,
            reason=None if advertiser is None else advertiser.reason,
            name=None if advertiser is None or advertiser.info is None else advertiser.info.name,
            household=hearth.mesh.membership.household_id,
            running=hearth.state.value,
        )
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    emit(closed=True, advertiser=None if advertiser is None else advertiser.state.value)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("browse")
    b.add_argument("--ip", required=True)
    a = sub.add_parser("agent")
    a.add_argument("--home", type=Path, required=True)
    a.add_argument("--config", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "browse":
        asyncio.run(browse(args.ip))  # Home Assistant's loop is asyncio's own
    else:
        from edge_agent import aio

        aio.run(agent(args.home, args.config))  # as `hearth run` runs it (uvloop)


if __name__ == "__main__":
    main()
