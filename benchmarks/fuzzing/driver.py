"""Runs a fuzz target under Hypothesis: one system kept up across inputs (state accumulates, as on a
device that runs for months), each example one input, the invariants after each, a probe every few.

A failed input leaves the system in an unknown state, so the next example (Hypothesis shrinking the
failure, or the next one) starts on a fresh system. The CI tests call `fuzz` with a small example
count under the active Hypothesis profile (derandomized with ``CI`` set); `benchmarks.fuzz` calls
`campaign` for hundreds of thousands, in runs of a few thousand seeded examples each.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import re
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, reproduce_failure, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import StopTest
from hypothesis.reporting import with_reporter

from benchmarks.fuzzing.target import Target
from benchmarks.rigs.hypothesis_draws import seeded_draws

__all__ = ["Failure", "Outcome", "Session", "campaign", "fuzz", "quiet_agent_logs", "seeded_draws"]

BLOB = re.compile(r"@reproduce_failure\('([^']+)', (b'[^']*')\)")


@contextlib.contextmanager
def quiet_agent_logs() -> Iterator[None]:
    """Only errors from the agent's loggers while fuzzing: every refused input logs a warning, and
    hundreds of thousands of them cost more than the inputs (errors are what the targets count)."""
    agent = logging.getLogger("edge_agent")
    level = agent.level
    agent.setLevel(logging.ERROR)
    try:
        yield
    finally:
        agent.setLevel(level)


class Session:
    """One target's system across examples; reopened after a failed input."""

    def __init__(self, target: type[Target], tmp: Path, *, probe_every: int, batch: int = 1) -> None:
        self.target_type = target
        self.tmp = tmp
        self.probe_every = probe_every
        self.batch = batch
        """Inputs per example (the invariants still hold after each): Hypothesis's own cost per example
        is then shared, for long campaigns; a failure stops the example at the input that failed."""
        self.runner = asyncio.Runner()
        self.target: Target | None = None
        self.systems = 0
        self.inputs = 0
        self.probes = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._close()
        finally:
            self.runner.close()

    def _open(self) -> Target:
        self.systems += 1
        target = self.target_type()
        where = self.tmp / f"{target.name}-{self.systems}"
        where.mkdir(parents=True)
        self.runner.run(target.open(where))
        self.target = target
        return target

    def _close(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            self.runner.run(target.close())

    def one(self, data: st.DataObject) -> None:
        """Feed one input and check the invariants (the body of every example)."""
        target = self.target or self._open()
        try:
            self.runner.run(self._step(target, data))
        except StopTest:  # Hypothesis ran out of choices mid-input: not a finding, the system is fine
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                self._close()
            self.target = None
            raise

    async def _step(self, target: Target, data: st.DataObject) -> None:
        for _ in range(self.batch):
            await target.feed(data)
            target.check()
            self.inputs += 1
            if self.inputs % self.probe_every == 0:
                self.probes += 1
                await target.probe()
                target.check()


def _settings(examples: int, *, campaign: bool, shrink: bool = True) -> settings:
    """Inherit the active profile (the ``ci`` profile derandomizes) unless running a seeded campaign."""
    extra: dict[str, object] = {"database": None, "derandomize": False} if campaign else {}
    phases = (Phase.explicit, Phase.reuse, Phase.generate, *((Phase.shrink,) if shrink else ()))
    return settings(
        max_examples=examples,
        deadline=None,
        print_blob=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=phases,
        **extra,  # type: ignore[arg-type]
    )


def fuzz(session: Session, examples: int) -> None:
    """Run ``examples`` inputs through ``session`` under the active Hypothesis profile (the CI form)."""

    @_settings(examples, campaign=False)
    @given(st.data())
    def example(data: st.DataObject) -> None:
        session.one(data)

    with quiet_agent_logs(), seeded_draws():
        example()


@dataclass
class Failure:
    """One failed input: what broke, why (the whole chain: a failure Hypothesis could not replay shows
    as Flaky around the original), and what reproduces it."""

    message: str
    causes: list[str] = field(default_factory=list)
    traceback: str = ""
    reproducer: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """What makes two failures the same (their innermost cause, without numbers that vary)."""
        return re.sub(r"\d+", "N", (self.causes or [self.message])[-1])[:200]


@dataclass
class Outcome:
    """A campaign's figures, and its failures (with what reproduces each)."""

    target: str
    inputs: int = 0
    probes: int = 0
    seconds: float = 0.0
    systems: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failure(self) -> str:
        """The first failure's message ("" if none)."""
        return self.failures[0].message if self.failures else ""

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _causes(exc: BaseException, depth: int = 0) -> list[str]:
    """Every exception inside ``exc``: its group members, its cause or context, innermost last."""
    here = [f"{type(exc).__name__}: {exc}"[:1000]]
    if depth > 6:
        return here
    inner: list[BaseException] = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else []
    if exc.__cause__ is not None or exc.__context__ is not None:
        inner.append(exc.__cause__ or exc.__context__)  # type: ignore[arg-type]
    for sub in inner:
        here += _causes(sub, depth + 1)
    return here


def _failure(
    exc: Exception,
    lines: list[str],
    name: str,
    replay: tuple[str, str] | None,
    base_seed: int,
    inputs: int,
    run_size: int,
    batch: int,
) -> Failure:
    notes = [str(n) for n in getattr(exc, "__notes__", [])]
    found = [line for line in [*notes, *lines] if line.strip()]
    failure = Failure(
        message=f"{type(exc).__name__}: {exc}"[:2000],
        causes=_causes(exc)[1:],
        traceback="".join(traceback.format_exception(exc))[-12000:],
        reproducer=[line[:3000] for line in found][:40],
    )
    blob = next((m for line in found if (m := BLOB.search(line))), None)
    if blob is not None:
        failure.reproducer.append(
            f'replay: python -m benchmarks.fuzz --target {name} --replay "{blob.group(1)}" "{blob.group(2)}"'
        )
    if replay is None:
        failure.reproducer.append(
            f"or the whole campaign up to it: python -m benchmarks.fuzz --target {name} --seed {base_seed} "
            f"--inputs {inputs + 1} --run-size {run_size} --batch {batch}"
        )
    return failure


def campaign(
    target: type[Target],
    tmp: Path,
    *,
    inputs: int,
    base_seed: int,
    probe_every: int = 100,
    run_size: int = 5000,
    batch: int = 8,
    replay: tuple[str, str] | None = None,
    progress: bool = False,
    shrink: bool = True,
    max_failures: int = 1,
) -> Outcome:
    """At least ``inputs`` inputs through one long-lived system, in Hypothesis runs of ``run_size``
    inputs (``batch`` per example) seeded ``base_seed``, ``base_seed + 1``, ...; stops at the first
    failure (shrunk unless ``shrink`` is False), or goes on after each on a fresh system until
    ``max_failures`` different ones. ``replay``: (version, blob) of a ``@reproduce_failure`` to run
    that one example on a fresh system instead."""
    outcome = Outcome(target.name)
    lines: list[str] = []
    started = time.perf_counter()
    with (
        Session(target, tmp, probe_every=probe_every, batch=batch) as session,
        quiet_agent_logs(),
        seeded_draws(),
        with_reporter(lambda value: lines.append(str(value))),
    ):
        run = 0
        while session.inputs < inputs:
            examples = 1 if replay else -(-min(run_size, inputs - session.inputs) // batch)

            @_settings(examples, campaign=True, shrink=shrink)
            @given(st.data())
            def example(data: st.DataObject) -> None:
                session.one(data)

            test = seed(base_seed + run)(example)
            if replay is not None:
                test = reproduce_failure(replay[0], ast.literal_eval(replay[1]))(example)
            lines.clear()
            before = session.inputs
            try:
                test()
            except Exception as exc:
                failure = _failure(
                    exc, lines, target.name, replay, base_seed, session.inputs, run_size, batch
                )
                if all(f.key != failure.key for f in outcome.failures):
                    outcome.failures.append(failure)
                if replay is not None or len(outcome.failures) >= max_failures:
                    break
            if replay is not None or session.inputs == before:
                break
            run += 1
            if progress:
                rate = session.inputs / (time.perf_counter() - started)
                print(f"  {target.name}: {session.inputs} inputs, {rate:.0f}/s", flush=True)
        outcome.inputs, outcome.probes, outcome.systems = session.inputs, session.probes, session.systems
    outcome.seconds = time.perf_counter() - started
    return outcome
