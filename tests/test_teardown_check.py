"""The teardown check (`no_leaks` in tests/conftest.py, `tests.support.leaks`) fails a test that leaves
something running, and says what: proven here by leaking on purpose."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import leaks

pytest_plugins = ["pytester"]


async def _forever() -> None:
    await asyncio.Event().wait()


def test_a_leaked_task_is_reported_by_name_and_coroutine() -> None:
    loop = asyncio.new_event_loop()
    try:
        tasks = [loop.create_task(_forever(), name="from-before")]  # running before: not the test's
        before = leaks.Snapshot.take(loop)
        tasks.append(loop.create_task(_forever(), name="left-behind"))
        loop.run_until_complete(asyncio.sleep(0))
        leaks.settle(loop, before, timeout=0.05)
        found = leaks.leaks(loop, before)
        assert len(found) == 1, found
        assert found[0].startswith("task 'left-behind': _forever")
        assert "tests/test_teardown_check.py:" in found[0]
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_a_task_cancelled_in_teardown_is_no_leak() -> None:
    loop = asyncio.new_event_loop()
    try:
        before = leaks.Snapshot.take(loop)
        loop.create_task(_forever(), name="cancelled").cancel()  # cancelled, never awaited
        leaks.settle(loop, before, timeout=0.5)
        assert leaks.leaks(loop, before) == []
    finally:
        loop.close()


def test_settling_returns_once_nothing_is_left_not_at_its_deadline() -> None:
    """Its own waiting task is not what it waits for (it was, and every async test's teardown took
    the whole second: a third of the suite's time)."""
    loop = asyncio.new_event_loop()
    try:
        before = leaks.Snapshot.take(loop)
        start = time.monotonic()
        leaks.settle(loop, before, timeout=60)
        assert time.monotonic() - start < 30
    finally:
        loop.close()


def test_a_live_thread_and_a_child_process_are_reported() -> None:
    before = leaks.Snapshot.take(None)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="left-thread", daemon=True)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        leaks.settle(None, before, timeout=0.05)
        found = leaks.leaks(None, before)
        assert any(f.startswith("thread 'left-thread' (daemon=True): Event.wait") for f in found), found
        assert any(f.startswith(f"process {child.pid}: ") and "time.sleep(30)" in f for f in found), found
    finally:
        stop.set()
        thread.join()
        child.kill()
        child.wait()
    assert leaks.leaks(None, before) == []


INNER = """
import asyncio

import pytest


async def forever() -> None:
    await asyncio.Event().wait()


async def test_leaks_a_task() -> None:
    asyncio.get_running_loop().create_task(forever(), name="leaky-one")


async def test_cleans_up() -> None:
    task = asyncio.get_running_loop().create_task(forever(), name="tidy-one")
    task.cancel()


@pytest.fixture
async def leaky_fixture():
    yield
    asyncio.get_running_loop().create_task(forever(), name="from-a-fixture-teardown")


async def test_leak_in_an_async_fixture_teardown(leaky_fixture) -> None:
    pass


async def boom() -> None:
    raise RuntimeError("nobody looked")


async def test_drops_a_failed_task() -> None:
    task = asyncio.get_running_loop().create_task(boom(), name="dropped-one")
    await asyncio.wait([task])  # it has failed; asyncio.wait leaves its exception unretrieved


@pytest.mark.asyncio(loop_scope="module")
async def test_leaks_on_a_module_loop() -> None:
    asyncio.get_running_loop().create_task(forever(), name="module-leak")


@pytest.mark.allow_leaks("demonstrates the opt-out")
async def test_allowed() -> None:
    asyncio.get_running_loop().create_task(forever(), name="allowed-one")
"""


def test_the_autouse_check_fails_a_leaking_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest("from tests.conftest import no_leaks, pytest_configure  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=6, errors=4)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_task*",
        "*left running after teardown:*",
        "*task 'leaky-one': forever at test_inner.py:*",
    ])  # fmt: skip
    result.stdout.fnmatch_lines(["*task 'from-a-fixture-teardown': forever at test_inner.py:*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_on_a_module_loop*", "*'module-leak'*"])
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_drops_a_failed_task*",
        "*asyncio logged: Task exception was never retrieved future: <Task finished name='dropped-one'*",
    ])  # fmt: skip
    assert "tidy-one" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*task 'allowed-one'*", "*(allowed: demonstrates the opt-out)*"])
