"""Shared fixtures. Model tests run the real engines on the packs `make packs` builds into $HEARTH_HOME."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_asyncio import is_async_test

from edge_agent.models.store import InstalledPack, PackStore
from tests.support import leaks
from tests.support.cli import cli_env

REPO = Path(__file__).resolve().parent.parent
# Hubs the tests start (in process or as `hearth` subprocesses) never announce a household on the
# machine's real LAN, where a developer's Home Assistant would offer to join it; the zeroconf tests
# set `advertise` in their own configs, inside network namespaces.
os.environ["HEARTH_MESH__ADVERTISE"] = "off"

# Hypothesis in CI (the CI variable set, as `CI=true bash .ci/run`): the same examples on every run, no
# example database, no deadline, and a failure prints its @reproduce_failure blob, so a red CI replays
# exactly with `CI=true .venv/bin/python -m pytest <test>`: the draws are also held independent of which
# modules are loaded (`same_draws_in_ci` below), so the one test alone draws what it drew in the suite.
# Elsewhere each run tries new examples. Spelled out rather than left to Hypothesis's own CI detection.
# (The HA bridge's venv has no hypothesis.)
HYPOTHESIS_CI = False
with contextlib.suppress(ImportError):
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    if os.environ.get("CI"):
        settings.load_profile("ci")
        HYPOTHESIS_CI = True


@pytest.fixture(scope="session", autouse=True)
def same_draws_in_ci() -> Iterator[None]:
    """Under the ``ci`` profile, no constants mined from loaded modules in any draw (Hypothesis mines every
    local module and again whenever more are imported: the full suite drew differently than one file)."""
    if not HYPOTHESIS_CI:
        yield
        return
    from benchmarks.rigs.hypothesis_draws import seeded_draws

    with seeded_draws():
        yield


# Two tiers. `make check` runs the fast one (`pytest -m "not slow"`: in-memory mesh, attack tables, IO-free
# cores, config, profiles, selection; no packs needed); `make test` runs everything. A test is slow when it
# uses real parts. Marked here by fixture: built packs (`store`, and `pack`, `llm_int4`, `embed_engines`
# built on it), `hearth` in subprocesses (`hearth_env`), a real Mosquitto (the modules' `broker`). Any
# other real part (a broker or agent process started in the test, network namespaces, Home Assistant, a
# pack opened directly) is declared where it is used: `pytestmark = pytest.mark.slow` for a whole module,
# `@pytest.mark.slow` on a test.
SLOW_FIXTURES = frozenset({"store", "hearth_env", "broker"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_leaks(why): this test may leave tasks, threads or processes running after its teardown "
        "(the `no_leaks` check still runs and reports them, but does not fail the test); say why",
    )


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Nothing a test started is left running after its teardown (as aiocoap's fixtures check): no
    asyncio task still pending on its loop, no thread and no child process still alive (allowed:
    `tests.support.leaks.ALLOWED_THREADS`, each with why), and nothing asyncio logged as an error (a
    task destroyed pending, an exception never retrieved). What leaked is named (a task's name and
    coroutine, file and line). An async test's loop is requested here, before its async fixtures, so
    their teardown runs first and this check runs before pytest-asyncio closes the loop (which would
    cancel a leaked task silently). `@pytest.mark.allow_leaks("why")` reports without failing."""
    loop: asyncio.AbstractEventLoop | None = None
    item = request.node
    if is_async_test(item):  # its loop's scope as pytest-asyncio reads it: the mark, else the default
        mark = item.get_closest_marker("asyncio")
        kwargs = mark.kwargs if mark is not None else {}
        # pytest-asyncio < 1 (Home Assistant's pins, `make test-ha`) has no runner: tasks go unchecked
        with contextlib.suppress(pytest.FixtureLookupError, ValueError):
            scope = kwargs.get("loop_scope") or request.config.getini("asyncio_default_test_loop_scope")
            loop = request.getfixturevalue(f"_{scope or 'function'}_scoped_runner").get_loop()
    before = leaks.Snapshot.take(loop)
    with leaks.AsyncioErrors() as asyncio_errors:
        yield
        leaks.settle(loop, before)
    found = [*leaks.leaks(loop, before), *asyncio_errors.found]
    if not found:
        return
    report = "left running after teardown:\n  " + "\n  ".join(found)
    marker = item.get_closest_marker("allow_leaks")
    if marker is not None:
        item.add_report_section("teardown", "leaks", f"{report}\n(allowed: {marker.args[0]})")
        return
    pytest.fail(report, pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def store() -> PackStore:
    s = PackStore()
    if not s.list():
        pytest.fail(f"no model packs in {s.packs}: run `make packs` (or `hearth models build`) first")
    return s


@pytest.fixture(scope="session")
def pack(store: PackStore):  # type: ignore[no-untyped-def]
    def get(pack_id: str) -> InstalledPack:
        return store.get(pack_id)

    return get


@pytest.fixture(scope="session")
def llm_int4(pack):  # type: ignore[no-untyped-def]
    from edge_agent.engines.generate import GenerateEngine

    p = pack("smollm2-135m-instruct@int4")
    return GenerateEngine(p.path, p.manifest.task_info, threads=2)


@pytest.fixture(scope="session")
def embed_engines(pack):  # type: ignore[no-untyped-def]
    from edge_agent.engines.embed import EmbedEngine

    return {
        q: EmbedEngine(
            pack(f"all-minilm-l6-v2@{q}").path, pack(f"all-minilm-l6-v2@{q}").manifest.task_info, 2
        )
        for q in ("fp32", "int8")
    }


@pytest.fixture
def hearth_env() -> dict[str, str]:
    """Environment for CLI subprocesses, a copy per test (see `tests.support.cli.cli_env`)."""
    return cli_env()


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())
