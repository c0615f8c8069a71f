"""Supervision: an unexpected error in a loop restarts it (with backoff), one in an item's handling
drops that item, and both are counted and shown; nothing a peer sends ends a loop.

The supervisor's own rules run on a fake clock and a recorded sleep; the endpoint's use of it runs on the
in-memory mesh with real nodes and crypto, a feature that raises on purpose standing in for a bug a
member can trigger."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edge_agent.mesh.protocol import Presence
from edge_agent.supervision import LOG_EVERY_S, LoopState, Supervisor
from tests.support.meshsim import household, until


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _supervisor(fake: FakeTime) -> Supervisor:
    return Supervisor(
        initial_backoff_s=0.1, max_backoff_s=1.0, healthy_after_s=60.0, clock=fake.clock, sleep=fake.sleep
    )


async def test_a_failing_loop_restarts_with_growing_backoff_that_resets_once_healthy() -> None:
    fake = FakeTime()
    sup = _supervisor(fake)
    runs: list[int] = []
    stop = False

    async def body() -> None:
        nonlocal stop
        runs.append(len(runs))
        if len(runs) == 7:
            fake.now += 61  # ran a minute cleanly before failing: backoff starts over
        if len(runs) == 9:
            stop = True
            raise ValueError("while stopping")  # an error while stopping is how a loop ends
        raise ValueError(f"bug number {len(runs)}")

    await sup.supervise("demo", body, stopping=lambda: stop)
    assert len(runs) == 9
    assert fake.slept == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.1, 0.2]
    (loop,) = sup.report().loops
    assert (loop.name, loop.restarts, loop.state) == ("demo", 8, LoopState.STOPPED)
    assert loop.last_error == "ValueError: bug number 8" and loop.supervised


async def test_a_loop_that_returns_while_the_agent_runs_is_restarted() -> None:
    fake = FakeTime()
    sup = _supervisor(fake)
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1

    await sup.supervise("quits", body, stopping=lambda: runs >= 3)
    assert runs == 3 and sup.restarts("quits") == 2
    assert sup.report().loops[0].last_error == "returned while the agent was running"


async def test_cancellation_ends_supervision_at_once() -> None:
    sup = Supervisor()
    started = asyncio.Event()

    async def body() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(sup.supervise("forever", body))
    await started.wait()
    assert sup.report().loops[0].state is LoopState.RUNNING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.report().loops[0].state is LoopState.STOPPED and sup.restarts("forever") == 0


def test_guard_drops_the_item_counts_it_and_lets_cancellation_through() -> None:
    sup = Supervisor()
    handled = []
    for item in ["ok", "bad", "ok", "bad"]:
        with sup.guard("handler", "dropped an item"):
            if item == "bad":
                raise KeyError(item)
            handled.append(item)
    assert handled == ["ok", "ok"]
    assert sup.drops("handler") == {"KeyError": 2}
    assert not sup.report().loops[0].supervised
    with pytest.raises(asyncio.CancelledError), sup.guard("handler"):
        raise asyncio.CancelledError


def test_logging_is_rate_limited_per_loop_and_reason_but_counts_stay_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    sup = _supervisor(fake)
    caplog.set_level(logging.WARNING, "edge_agent.supervision")
    for _ in range(1000):  # a peer repeating a poisoned message
        sup.drop("dispatch", "ValueError", ValueError("poison"), "dropped a message")
    fake.now += LOG_EVERY_S
    sup.drop("dispatch", "ValueError", ValueError("poison"), "dropped a message")
    lines = [r for r in caplog.records if r.name == "edge_agent.supervision"]
    assert [r.levelname for r in lines] == ["ERROR", "WARNING"]
    assert lines[0].exc_info is not None  # the traceback, once
    assert (
        lines[1].getMessage()
        == "dispatch: dropped a message: ValueError: poison (999 more since the last report)"
    )
    assert sup.drops("dispatch") == {"ValueError": 1001}


def test_reasons_and_names_are_bounded() -> None:
    sup = Supervisor()
    for i in range(100):
        sup.drop("handler", f"Reason{i}")
    assert len(sup.drops("handler")) == 33 and sup.drops("handler")["other"] == 68
    for i in range(100):
        sup.drop(f"name-{i}", "x")
    assert len(sup.report().loops) == 64


async def test_watch_counts_a_fire_and_forget_task_that_failed() -> None:
    sup = Supervisor()

    async def boom() -> None:
        raise RuntimeError("lost")

    task = asyncio.create_task(boom(), name="boom")
    sup.watch(task, "tasks")
    with pytest.raises(RuntimeError):
        await task
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert sup.drops("tasks") == {"RuntimeError": 1}


# -- the endpoint under supervision -----------------------------------------------------------------------


async def test_a_feature_that_raises_drops_that_message_and_the_device_keeps_serving(tmp_path: Path) -> None:
    from edge_agent.mesh.interfaces import Channel
    from edge_agent.mesh.protocol import CorrectionsQuery

    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)

        def buggy(sender: object, msg: CorrectionsQuery) -> None:
            raise ZeroDivisionError("a bug a member can trigger")

        hub.endpoint.register(CorrectionsQuery, buggy)
        query = CorrectionsQuery(nonce=1, reply_session=fridge.node.session)
        for _ in range(3):
            await fridge.endpoint.send(hub.id, Channel.REQUESTS, query, session=hub.node.session)
        sup = hub.endpoint.supervisor
        assert await until(lambda: sup.drops("mesh-dispatch") == {"ZeroDivisionError": 3})
        assert sup.restarts("mesh-connection") == 0
        peer = fridge.endpoint.peers.get(hub.id)
        assert peer is not None
        chunks = [c async for c in fridge.endpoint.stream(peer, "generate", {"words": ["ok"]}, deadline_s=5,
                                                          stall_s=2)]  # fmt: skip
        assert [c.text for c in chunks] == ["ok", ""]


async def test_a_presence_hook_that_raises_does_not_stop_the_others(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        seen: list[str] = []

        def broken(_: object) -> None:
            raise RuntimeError("feature bug")

        fridge.endpoint.presence_hooks.extend([broken, lambda opened: seen.append(opened.header.sender)])
        await home.start(hub, fridge)
        assert await until(lambda: len(seen) >= 3)
        assert set(seen) == {hub.id}
        assert fridge.endpoint.supervisor.drops("mesh-presence-hooks")["RuntimeError"] >= 3


async def test_an_unexpected_error_in_the_connection_loop_restarts_it(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        flush = fridge.endpoint.exchanges.flush_cancels
        calls = 0

        def fails_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug on reconnect")
            flush()

        fridge.endpoint.exchanges.flush_cancels = fails_once  # type: ignore[method-assign]
        home.sim.sever(fridge.id)  # reconnect: the first attempt hits the bug, the supervisor restarts
        sup = fridge.endpoint.supervisor
        assert await until(lambda: sup.restarts("mesh-connection") == 1 and calls >= 2)
        assert await until(fridge.endpoint.connected.is_set)
        peer = fridge.endpoint.peers.get(hub.id)
        assert peer is not None
        chunks = [c async for c in fridge.endpoint.stream(peer, "generate", {"words": ["back"]}, deadline_s=5,
                                                          stall_s=2)]  # fmt: skip
        assert [c.text for c in chunks] == ["back", ""]
        health = {loop.name: loop for loop in sup.report().loops}
        assert health["mesh-connection"].last_error == "RuntimeError: bug on reconnect"
        assert health["mesh-connection"].state is LoopState.RUNNING


async def test_an_advert_that_cannot_be_built_is_skipped_and_counted(tmp_path: Path) -> None:
    """N1's second half: an advert that cannot be built is not sent (logged and counted) and the
    loop that sends it goes on; MeshService then builds the next one without the update records."""
    from edge_agent.mesh.protocol import UpdateStatus

    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"])
        fridge = home.device("fridge")
        await home.start(hub, fridge)
        original = hub.endpoint.directory.presence
        assert original is not None

        def broken() -> Presence:
            UpdateStatus(name="Evil Name!", installed=0, available=0, state="current")
            raise AssertionError("unreachable")

        hub.endpoint.directory.presence = broken
        await hub.endpoint.publish_presence()  # nothing sent, nothing raised
        assert hub.endpoint.supervisor.drops("mesh-presence") == {"ValidationError": 1}
        hub.endpoint.directory.presence = original
        seen = fridge.endpoint.peers.get(hub.id)
        assert seen is not None and hub.endpoint.supervisor.restarts("mesh-housekeeping") == 0


async def test_a_local_call_that_hits_a_bug_fails_alone_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    """The local socket (CLI commands to a running agent): a call that fails unexpectedly gets an
    internal error, is counted, and the next call is served."""
    from edge_agent.errors import HearthError
    from edge_agent.hearth import PeersReport
    from edge_agent.local_api import LocalApiServer, LocalClient

    class Facade:  # the server under test is the socket, not the agent behind it
        supervisor = Supervisor()
        calls = 0

        def peers_report(self) -> PeersReport:
            self.calls += 1
            if self.calls == 1:
                raise ZeroDivisionError("a bug behind the socket")
            return PeersReport(household="h", peers=[], routes={}, dropped={})

    facade = Facade()
    server = LocalApiServer(facade, tmp_path / "agent.sock")  # type: ignore[arg-type]
    await server.start()
    try:
        async with LocalClient(tmp_path / "agent.sock", timeout_s=5) as client:
            with pytest.raises(HearthError, match=r"^internal error in the agent \(see its log\)$"):
                await client.peers()
            report = await client.peers()
        assert report.household == "h"
        assert facade.supervisor.drops("local-socket") == {"ZeroDivisionError": 1}
    finally:
        await server.aclose()
