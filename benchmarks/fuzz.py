"""Fuzz campaign (issue 21): at least 200,000 inputs per target through the real endpoint on the in-memory
mesh (and the real Wyoming server), with the invariants after every input and a probe every few:
no loop dies, the device keeps serving, trusted state unchanged. The CI form of the same targets is
tests/test_fuzz.py; the harness is benchmarks/fuzzing.

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
from benchmarks.fuzzing import TARGETS, Outcome, campaign
from benchmarks.fuzzing.driver import Failure
from benchmarks.fuzzing.known import known

RESULTS = Path(__file__).parent / "results"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Fuzz campaign",
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date'][:10]}; commit {result['source']['commit']}"
        f"{_tree(result['source'])}; base seed {result['seed']}, "
        f"a probe every {result['probe_every']} inputs. Every input is followed by the invariants (no supervised "
        "loop restarted, nothing dropped as unexpected, nothing logged as an error, trusted state unchanged); "
        "every probe checks the device still serves an honest client.",
        "",
        "| target | commit | inputs | inputs/s | probes | failures | what it feeds |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, t in result["targets"].items():
        commit = t.get("commit", result["source"]["commit"])
        lines.append(
            f"| {name} | {commit} | {t['inputs']:,} | {t['per_second']:.0f} | {t['probes']:,} | "
            f"{len(t['failures'])} | {TARGETS[name].about} |"
        )
    lines += ["", f"Total: {result['inputs']:,} inputs, {result['failures']} failure(s)."]
    for name, t in result["targets"].items():
        if (earlier := t.get("earlier")) is not None:
            found = "; ".join(m[:300] for m in earlier["failures"]) or "none"
            lines += ["", f"{name} was run again at {t['commit']}; at {earlier['commit']} ({earlier['inputs']:,} "
                      f"inputs) it failed: {found}" + (f" ({earlier['note']})" if earlier.get("note") else "")]  # fmt: skip
    for name, t in result["targets"].items():
        for f in t["failures"]:
            lines += ["", f"## {name}: {f['message'][:300]}", ""]
            if f["known"]:
                lines += [
                    f"Known, in another owner's part (benchmarks/fuzzing/known.py): {f['known']}",
                    "",
                ]
            if f["causes"]:
                lines += ["Causes, innermost last:", "", *(f"- {cause[:500]}" for cause in f["causes"]), ""]
            shown = [
                line if len(line) <= 400 else f"{line[:400]}… ({len(line):,} characters)"
                for line in f["reproducer"]
            ]
            lines += ["Reproducer (whole in fuzz.json):", "", "```", *shown, "```"]
    return "\n".join(lines)


def _tree(source: dict[str, Any]) -> str:
    count = source.get("uncommitted")
    return "" if count is None else f" ({count} files modified in the tree)"


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


def _row(outcome: Outcome, source: dict[str, Any]) -> dict[str, Any]:
    def why(f: Failure) -> str | None:
        return known(outcome.target, "\n".join([f.message, *f.causes]))

    return {
        "commit": source["commit"],
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
    update: bool = False,
) -> tuple[dict[str, Any], str]:
    """Run every target in ``targets`` for ``inputs`` inputs; (result, markdown). ``out_dir`` None: no
    files written; ``update``: the targets run replace theirs in the results already there."""
    rows: dict[str, dict[str, Any]] = {}
    source = _source()
    for name in targets:
        if not quiet:
            print(f"{name}: {TARGETS[name].about}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
            outcome = campaign(
                TARGETS[name], Path(tmp), inputs=inputs, base_seed=seed, probe_every=probe_every,
                run_size=run_size, batch=batch, replay=replay, progress=not quiet, max_failures=max_failures,
            )  # fmt: skip
        rows[name] = _row(outcome, source)
        if not quiet:
            verdict = (
                f"{len(outcome.failures)} FAILURE(S): {outcome.failure[:300]}" if outcome.failures else "ok"
            )
            print(f"{name}: {outcome.inputs:,} inputs, {outcome.per_second:.0f}/s, {verdict}", flush=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "source": source,
        "seed": seed,
        "probe_every": probe_every,
        "run_size": run_size,
        "batch": batch,
        "inputs": sum(r["inputs"] for r in rows.values()),
        "failures": sum(len(r["failures"]) for r in rows.values()),
        "targets": rows,
    }
    if update and out_dir is not None and (out_dir / "fuzz.json").exists():
        result = _updated(json.loads((out_dir / "fuzz.json").read_text()), result)
    md = markdown(result)
    if out_dir is not None and replay is None:
        write_report(out_dir, "fuzz", result, md)
    return result, md


def _updated(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The earlier campaign with the targets just run in place of theirs (a re-run after a fix); what
    they replaced is kept, summarised, under "earlier"."""
    rows = dict(before["targets"])
    for name, row in now["targets"].items():
        if (old := rows.get(name)) is not None:
            row["earlier"] = {
                "commit": old.get("commit", before["source"]["commit"]),
                "inputs": old["inputs"],
                "failures": [f["message"] for f in old["failures"]],
            }
        rows[name] = row
    return {
        **before,
        "targets": rows,
        "inputs": sum(r["inputs"] for r in rows.values()),
        "failures": sum(len(r["failures"]) for r in rows.values()),
    }


def rewrite_markdown(out_dir: Path = RESULTS) -> None:
    """fuzz.md again from fuzz.json (after a change to how results are shown; nothing is re-run)."""
    result = json.loads((out_dir / "fuzz.json").read_text())
    (out_dir / "fuzz.md").write_text(markdown(result) + "\n")


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
    parser.add_argument(
        "--update", action="store_true", help="Replace only these targets' rows in the results (a re-run)."
    )
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
        update=args.update,
    )  # fmt: skip
    print(json.dumps(result) if args.json else md)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
