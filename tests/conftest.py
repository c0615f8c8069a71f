"""Shared fixtures. Model tests run the real engines on the packs `make packs` builds into $HEARTH_HOME."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from edge_agent.models.store import InstalledPack, PackStore
from tests.support.cli import cli_env

REPO = Path(__file__).resolve().parent.parent
# Hubs the tests start (in process or as `hearth` subprocesses) never announce a household on the
# machine's real LAN, where a developer's Home Assistant would offer to join it; the zeroconf tests
# set `advertise` in their own configs, inside network namespaces.
os.environ["HEARTH_MESH__ADVERTISE"] = "off"

# Hypothesis in CI (the CI variable set, as `CI=true bash .ci/run`): the same examples on every run, no
# example database, no deadline, and a failure prints its @reproduce_failure blob, so a red CI replays
# exactly with `CI=true .venv/bin/python -m pytest <test>`. Elsewhere each run tries new examples. Spelled
# out rather than left to Hypothesis's own CI detection. (The HA bridge's venv has no hypothesis.)
with contextlib.suppress(ImportError):
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    if os.environ.get("CI"):
        settings.load_profile("ci")

# Two tiers. `make check` runs the fast one (`pytest -m "not slow"`: in-memory mesh, attack tables, IO-free
# cores, config, profiles, selection; no packs needed); `make test` runs everything. A test is slow when it
# uses real parts. Marked here by fixture: built packs (`store`, and `pack`, `llm_int4`, `embed_engines`
# built on it), `hearth` in subprocesses (`hearth_env`), a real Mosquitto (the modules' `broker`). Any
# other real part (a broker or agent process started in the test, network namespaces, Home Assistant, a
# pack opened directly) is declared where it is used: `pytestmark = pytest.mark.slow` for a whole module,
# `@pytest.mark.slow` on a test.
SLOW_FIXTURES = frozenset({"store", "hearth_env", "broker"})


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
