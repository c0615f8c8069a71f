"""How far the offloaded chat walks: function-to-function crossings between files (issue 22's Goals).

A fridge panel (plan: generate offload-only) asks ``hearth chat``'s question through its own `Hearth` (as
the command does when no agent runs on it); the hub's `Hearth` serves it on the real engine and streams
it back. Both agents run in this process on a real Mosquitto, as ``tests/test_offload.py`` runs them.
After one unmeasured warm-up chat (imports, sessions), a second chat is recorded with ``sys.setprofile``
(and ``threading.setprofile`` for the engine's worker threads) from ``generate()`` to the stream's end
(``--with-discovery``: from the wait for a peer that offers it, as ``hearth chat`` in a fresh process
does; up to 2026-12 the recorded window always included that wait and its RTT pings).

Counted as the issue counts, one step per function entered in another file: ``steps`` is the number of
distinct ``edge_agent`` functions entered from a function in another file, the caller being the nearest
``edge_agent`` frame up the stack (asyncio, pydantic and the standard library are skipped); a function
entered with no ``edge_agent`` frame above it (a task, callback or worker thread the loop started) counts
as entered from elsewhere. ``crossing_pairs`` counts distinct (caller → callee) pairs instead, ``files``
the distinct ``edge_agent`` files that ran. Properties and pydantic validators are functions too, so
the figures are larger than a count by reading; compare them only with this tool's own figures.
Background loops of both agents (presence every 30 s here, housekeeping) can add a few steps.

    python benchmarks/crossings.py [--tokens 16] [--list]      # JSON on stdout

Runs against whichever ``edge_agent`` is first on ``sys.path``: ``PYTHONPATH=/tmp/base22 python
benchmarks/crossings.py`` measures an older checkout with the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

PROMPT = "Describe a kitchen in three sentences."


@dataclass
class Walk:
    """What one recorded window saw."""

    package: Path
    recording: bool = False
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    entered: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _ours(self, frame: FrameType) -> str | None:
        name = frame.f_code.co_filename
        return name if name.startswith(str(self.package)) else None

    def _label(self, frame: FrameType, file: str) -> str:
        rel = Path(file).relative_to(self.package.parent)
        return f"{rel}:{frame.f_code.co_qualname}"

    def hook(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call" or not self.recording:
            return
        file = self._ours(frame)
        if file is None:
            return
        callee = self._label(frame, file)
        up = frame.f_back
        while up is not None and self._ours(up) is None:
            up = up.f_back
        caller_file = self._ours(up) if up is not None else None
        with self.lock:
            self.files.add(file)
            if caller_file == file:
                return
            caller = self._label(up, caller_file) if up is not None and caller_file else "<loop>"
            self.pairs[(caller, callee)] += 1
            self.entered.add(callee)


def _config(name: str, port: int, profile: str) -> Any:
    from edge_agent.config import AgentConfig

    return AgentConfig.model_validate(
        {
            "agent": {"name": name, "profile": profile},
            "mesh": {
                "enabled": True,
                "broker": f"mqtt://127.0.0.1:{port}",
                "presence_interval_s": 30.0,
                "advertise": "off",
            },
            "engines": {"threads": 1},
        }
    )


async def _chat(fridge: Any, tokens: int, walk: Walk | None, discovery: bool) -> tuple[str, str]:
    """One chat; recorded into ``walk`` (if given) from ``generate()`` to the stream's end, or from the
    wait for a peer offering it (``discovery``: what ``hearth chat`` in a fresh process adds, the RTT
    pings to the candidates included)."""
    from edge_agent import GenerateRequest

    request = GenerateRequest.from_prompt(PROMPT, max_tokens=tokens)
    if walk is not None and discovery:
        walk.recording = True
    await fridge.wait_for_peers("generate", timeout=10)
    if walk is not None:
        walk.recording = True
    routed = fridge.generate(request)
    text = "".join([chunk.text async for chunk in routed])
    if walk is not None:
        walk.recording = False
    return text, str(routed.served_by)


async def measure(tokens: int, discovery: bool = False) -> tuple[Walk, dict[str, object]]:
    import edge_agent

    # The shared rig (a Mosquitto, households on disk) lives in benchmarks/rigs, as for benchmarks/mesh.py.
    from benchmarks.rigs.brokers import run_mosquitto
    from benchmarks.rigs.meshkit import provision, service
    from edge_agent.models.store import PackStore

    walk = Walk(Path(edge_agent.__file__).resolve().parent)
    store = PackStore()
    with tempfile.TemporaryDirectory(prefix="hearth-crossings-") as tmp:
        root = Path(tmp)
        provision(root / "hub", root / "hub", "hub", "hub")
        provision(root / "hub", root / "fridge", "fridge", "fridge-panel")
        with run_mosquitto(root / "broker") as broker:
            hub = service(root / "hub", _config("hub", broker.port, "hub"), store)
            fridge = service(root / "fridge", _config("fridge", broker.port, "fridge-panel"), store)
            threading.setprofile(walk.hook)
            sys.setprofile(walk.hook)
            try:
                async with hub, fridge:
                    warm, served = await _chat(fridge, tokens, None, discovery)
                    assert served == "hub", f"served by {served}, not the hub"
                    text, served = await _chat(fridge, tokens, walk, discovery)
            finally:
                sys.setprofile(None)
                threading.setprofile(None)
    assert served == "hub" and text == warm, (served, text, warm)
    return walk, {"served_by": served, "chars": len(text)}


def _commit(package: Path) -> str:
    run = subprocess.run(
        ["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(package), "status", "--porcelain", "--", "."], capture_output=True, text=True
    )
    return run.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=16, help="tokens the hub generates (default 16)")
    parser.add_argument("--list", action="store_true", help="include every crossing and file")
    parser.add_argument(
        "--with-discovery",
        action="store_true",
        help="record from the wait for a peer offering generate (and the RTT pings) instead of generate()",
    )
    args = parser.parse_args(argv)
    walk, chat = asyncio.run(measure(args.tokens, args.with_discovery))
    result: dict[str, object] = {
        "benchmark": "crossings",
        "path": "fridge-panel Hearth.generate -> hub serves (real engine) -> streamed back",
        "window": "wait_for_peers + generate() to the stream's end"
        if args.with_discovery
        else "generate() to the stream's end",
        "transport": "real Mosquitto, both agents in one process",
        "commit": _commit(walk.package),
        "tokens": args.tokens,
        **chat,
        "steps": len(walk.entered),
        "files": len(walk.files),
        "crossing_pairs": len(walk.pairs),
        "entered_from_the_loop": sum(1 for a, _ in walk.pairs if a == "<loop>"),
        "crossing_calls_total": sum(walk.pairs.values()),
    }
    if args.list:
        result["crossing_list"] = [f"{a} -> {b} x{n}" for (a, b), n in sorted(walk.pairs.items())]
        result["file_list"] = sorted(str(Path(f).relative_to(walk.package.parent)) for f in walk.files)
        result["steps_per_file"] = dict(Counter(e.split(":")[0] for e in walk.entered).most_common())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]  # no `benchmarks/*` as top level
    sys.path.append(str(here.parent))  # `tests` of this checkout, unless PYTHONPATH names another
    raise SystemExit(main())
