"""Fuzz campaign (issue 21): at least 200,000 inputs per target through the real endpoint on the in-memory
mesh (and the real Wyoming server), with the invariants after every input and a probe every few:
no loop dies, the device keeps serving, trusted state unchanged. The CI form of the same targets is
tests/test_fuzz.py; the harness is tests/support/fuzzing.

    python -m benchmarks.fuzz --inputs 200000 --target all [--seed 0] [--json]
    python -m benchmarks.fuzz --target memory --replay "6.170.17" "b'...'"   (one failure, as printed)

Each target keeps one system up for its whole campaign (state accumulates, as on a device that runs for
months), fed by Hypothesis in seeded runs of ``--run-size`` examples. Writes benchmarks/results/fuzz.json
and fuzz.md (inputs, inputs/s, failures, CPU) unless ``--replay``. A failure does not end a target's
campaign: it goes on, on a fresh system, until ``--max-failures`` different ones; exits 1 on any,
printing what reproduces each. Run it under ``nice``: it takes one core for as long as it runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_report
from tests.support.fuzzing import TARGETS, Outcome, campaign
from tests.support.fuzzing.driver import Failure
from tests.support.fuzzing.known import known

RESULTS = Path(__file__).parent / "results"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Fuzz campaign",
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date'][:10]}; commit {result['source']['commit']} "
        f"({result['source']['uncommitted']} files modified in the tree); base seed {result['seed']}, "
        f"a probe every {result['probe_every']} inputs. Every input is followed by the invariants (no supervised "
        "loop restarted, nothing dropped as unexpected, nothing logged as an error, trusted state unchanged); "
        "every probe checks the device still serves an honest client.",
        "",
        "| target | inputs | inputs/s | probes | failures | what it feeds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, t in result["targets"].items():
        lines.append(
            f"| {name} | {t['inputs']:,} | {t['per_second']:.0f} | {t['probes']:,} | {len(t['failures'])} | "
            f"{TARGETS[name].about} |"
        )
    lines += ["", f"Total: {result['inputs']:,} inputs, {result['failures']} failure(s)."]
    for name, t in result["targets"].items():
        for f in t["failures"]:
            lines += ["", f"## {name}: {f['message'][:300]}", ""]
            if f["known"]:
                lines += [
                    f"Known, in another owner's part (tests/support/fuzzing/known.py): {f['known']}",
                    "",
                ]
            lines += ["Causes, innermost last:", ""]
            lines += [f"- {cause[:500]}" for cause in f["causes"]] or ["- (none)"]
            lines += ["", "```", *f["reproducer"], "```"]
    return "\n".join(lines)


def _source() -> dict[str, Any]:
    """The commit fuzzed, and how many files differed from it (others' work in progress)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": len(git("status", "--porcelain", "-uno").splitlines()),
    }


def _row(outcome: Outcome) -> dict[str, Any]:
    def why(f: Failure) -> str | None:
        return known(outcome.target, "\n".join([f.message, *f.causes]))

    return {
        "inputs": outcome.inputs,
        "seconds": round(outcome.seconds, 1),
        "per_second": round(outcome.per_second, 1),
        "probes": outcome.probes,
        "systems": outcome.systems,
        "failures": [
            {
                "message": f.message,
                "known": why(f),
                "causes": f.causes,
                "reproducer": f.reproducer,
                "traceback": f.traceback,
            }
            for f in outcome.failures
        ],
    }


def run_fuzz_bench(
    *,
    targets: list[str],
    inputs: int,
    seed: int = 0,
    probe_every: int = 100,
    run_size: int = 5000,
    batch: int = 8,
    max_failures: int = 5,
    out_dir: Path | None = RESULTS,
    replay: tuple[str, str] | None = None,
    quiet: bool = False,
) -> tuple[dict[str, Any], str]:
    """Run every target in ``targets`` for ``inputs`` inputs; (result, markdown). ``out_dir`` None: no
    files written."""
    rows: dict[str, dict[str, Any]] = {}
    for name in targets:
        if not quiet:
            print(f"{name}: {TARGETS[name].about}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
            outcome = campaign(
                TARGETS[name], Path(tmp), inputs=inputs, base_seed=seed, probe_every=probe_every,
                run_size=run_size, batch=batch, replay=replay, progress=not quiet, max_failures=max_failures,
            )  # fmt: skip
        rows[name] = _row(outcome)
        if not quiet:
            verdict = (
                f"{len(outcome.failures)} FAILURE(S): {outcome.failure[:300]}" if outcome.failures else "ok"
            )
            print(f"{name}: {outcome.inputs:,} inputs, {outcome.per_second:.0f}/s, {verdict}", flush=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "source": _source(),
        "seed": seed,
        "probe_every": probe_every,
        "run_size": run_size,
        "batch": batch,
        "inputs": sum(r["inputs"] for r in rows.values()),
        "failures": sum(len(r["failures"]) for r in rows.values()),
        "targets": rows,
    }
    md = markdown(result)
    if out_dir is not None and replay is None:
        write_report(out_dir, "fuzz", result, md)
    return result, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=200_000, help="Inputs per target (default 200000).")
    parser.add_argument(
        "--target", default="all", help=f"all, or a comma-separated list of: {', '.join(TARGETS)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="Base seed (run k uses seed + k).")
    parser.add_argument("--probe-every", type=int, default=100, help="Inputs between probes.")
    parser.add_argument("--run-size", type=int, default=5000, help="Inputs per Hypothesis run.")
    parser.add_argument("--batch", type=int, default=8, help="Inputs per Hypothesis example.")
    parser.add_argument(
        "--max-failures", type=int, default=5, help="Different failures per target before it stops."
    )
    parser.add_argument("--replay", nargs=2, metavar=("VERSION", "BLOB"), help="Replay one printed failure.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Directory for fuzz.json and fuzz.md.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of Markdown.")
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.target == "all" else args.target.split(",")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    result, md = run_fuzz_bench(
        targets=names, inputs=1 if args.replay else args.inputs, seed=args.seed, probe_every=args.probe_every,
        run_size=args.run_size, batch=args.batch, max_failures=args.max_failures, out_dir=args.out, replay=tuple(args.replay) if args.replay else None,
        quiet=args.json,
    )  # fmt: skip
    print(json.dumps(result) if args.json else md)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
