"""Failover trials: kill the serving hub mid-stream, many times; the stream must complete exactly.

Two hub agents (same int4 pack) and a fridge panel on a real Mosquitto. Each trial streams a greedy
answer to the fridge, crashes the hub serving it after k tokens (its TCP connection drops without
DISCONNECT, so Mosquitto fires its last will), and checks the fridge's stream against an uninterrupted
reference: identical text means no token was lost or repeated. Also times the gap the user sees (kill ->
next chunk).

    python -m benchmarks.failover --trials 200 [--json] [--min-tokens 40]

Every answer is forced to at least ``--min-tokens`` tokens so that it outlasts every kill point whatever
the model would say; ``--min-tokens 0`` lets the model stop on its own (the request before mesh v2,
for A/B runs against older code).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.rigs.brokers import run_mosquitto
from benchmarks.rigs.meshkit import TwoHubs, config, crash, provision, service, watchdog
from edge_agent import aio
from edge_agent.client.schemas import GenerateRequest
from edge_agent.hearth import Hearth
from edge_agent.models.store import PackStore

PROMPT = "Describe a kitchen in three sentences."
RESULTS = Path(__file__).parent / "results"


async def trials(n: int, tmp: Path, min_tokens: int = 40) -> dict[str, Any]:
    store = PackStore()
    request = GenerateRequest.from_prompt(PROMPT, max_tokens=48, min_tokens=min_tokens)
    with run_mosquitto(tmp / "broker") as broker:
        rig = TwoHubs.create(tmp, broker.port, store)
        provision(tmp / "hub-a", tmp / "fridge", "fridge", "fridge-panel")
        fridge = service(tmp / "fridge", config("fridge", broker.port, "fridge-panel"), store)
        exact = failed_over = 0
        gaps: list[float] = []
        problems: list[str] = []
        try:
            async with rig.hubs["hub-a"], rig.hubs["hub-b"], fridge:
                rig.offers.update(rig.hubs["hub-a"].mesh.offers)
                await fridge.wait_for_peers("generate", timeout=5)
                expected = "".join([c.text async for c in fridge.router.generate(request)])
                rates = await stream_rates(fridge, rig.hubs, request, runs=7)
                for trial in range(n):
                    async with watchdog(90, f"trial {trial}"):
                        await fridge.wait_for_peers("generate", timeout=5)
                        kill_after = 1 + (trial * 7) % 28
                        routed = fridge.router.generate(request)
                        text, seen, victim, killed_at = "", 0, None, 0.0
                        async for chunk in routed:
                            if killed_at and len(routed.attempts) == 2:
                                gaps.append(
                                    (time.perf_counter() - killed_at) * 1000
                                )  # first chunk from the new peer
                                killed_at = 0.0
                            text += chunk.text
                            seen += len(chunk.token_ids)
                            if victim is None and seen >= kill_after:
                                victim = routed.served_by
                                killed_at = time.perf_counter()
                                await crash(rig.hubs[victim])
                        exact += text == expected
                        failed_over += routed.failovers == 1 and routed.served_by != victim
                        if text != expected:
                            problems.append(f"trial {trial}: killed {victim} after {kill_after}: {text!r}")
                        assert victim is not None
                        await rig.revive(victim, fridge)
        finally:
            await rig.aclose()
        return {
            **rates,
            "trials": n,
            "min_tokens": min_tokens,
            "exact_match": exact,
            "failed_over_once": failed_over,
            "gap_ms_median": statistics.median(gaps) if gaps else None,
            "gap_ms_p99": sorted(gaps)[int(0.99 * (len(gaps) - 1))] if gaps else None,
            "dropped_frames": dict(fridge.mesh.node.dropped),
            "problems": problems[:10],
        }


async def stream_rates(
    fridge: Hearth, hubs: dict[str, Hearth], request: GenerateRequest, runs: int
) -> dict[str, Any]:
    """The decode rate the fridge sees through the mesh against the serving hub's own local decode of
    the same request, interleaved, medians (tokens after the first per second from the first token on:
    prefill and the request's trip are excluded, each is measured elsewhere)."""

    def rate(stamps: list[tuple[float, int]]) -> float:
        tokens = sum(n for _, n in stamps[1:])
        return tokens / (stamps[-1][0] - stamps[0][0])

    mesh, local, paths = [], [], Counter[str]()
    for _ in range(runs):
        routed = fridge.router.generate(request)
        stamps = [(time.perf_counter(), len(c.token_ids)) async for c in routed if c.token_ids]
        mesh.append(rate(stamps))
        hub = hubs[routed.served_by]
        links = fridge.updater.links
        paths["direct" if links is not None and hub.mesh.node.device_id in links.links else "broker"] += 1
        stamps = [
            (time.perf_counter(), len(c.token_ids)) async for c in hub.agent.generate(request) if c.token_ids
        ]
        local.append(rate(stamps))
    mesh_rate, local_rate = statistics.median(mesh), statistics.median(local)
    return {
        "decode_tok_s": {"through_mesh": mesh_rate, "local": local_rate, "runs": runs, "paths": dict(paths)},
        "ratios": {"mesh_decode_vs_local": mesh_rate / local_rate},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument(
        "--min-tokens",
        type=int,
        default=40,
        help="Force answers to at least this many tokens (0: the model decides).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = aio.run(trials(args.trials, Path(tmp), args.min_tokens))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"decode through the mesh {result['decode_tok_s']['through_mesh']:.1f} tok/s, locally "
              f"{result['decode_tok_s']['local']:.1f} tok/s ({result['decode_tok_s']['paths']})")  # fmt: skip
        print(f"{result['exact_match']}/{result['trials']} streams identical to the uninterrupted answer; "
              f"{result['failed_over_once']} failed over exactly once; gap median {result['gap_ms_median']:.1f} ms, "
              f"p99 {result['gap_ms_p99']:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
