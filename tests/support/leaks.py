"""What a test leaves running: asyncio tasks still pending on its loop, threads and child processes it
started that are still alive, and tasks asyncio itself complained about (`AsyncioErrors`). Checked
after every test's teardown (tests/conftest.py `no_leaks`), as aiocoap's fixtures check that nothing a
test built outlives it.

A leak is reported by what it is (a task's name and the coroutine it is suspended in, file and line; a
thread's name and what it runs; a process's pid and command line), so the message says where to look.
The check first lets the loop run a little (`SETTLE_S`): a task cancelled in a teardown but not awaited
finishes then, and is no leak; one still pending after that is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["ALLOWED_THREADS", "SETTLE_S", "AsyncioErrors", "Snapshot", "describe_task", "leaks", "settle"]

SETTLE_S = 1.0
"""How long tasks, threads and processes get to end after the last teardown before they count."""

ALLOWED_THREADS: dict[str, str] = {
    # name prefix: why a thread of that name may outlive the test that started it. Only Python threads
    # are seen: onnxruntime's and onnxruntime-genai's intra-op pools are native threads of the session
    # an engine holds (session-scoped fixtures), and aiomqtt runs paho on the loop (no paho thread), so
    # neither needs an entry.
    "tqdm_monitor": "tqdm's process-wide monitor (`tqdm.monitor`, a daemon started with the first bar and "
    "kept for the life of the process by design); faster-whisper, the reference ASR peer, draws bars",
    "asyncio_": "the loop's default executor (asyncio.to_thread): its idle workers are shut down when "
    "pytest-asyncio closes the loop; a worker still running a call is reported",
}


@dataclass(frozen=True)
class Snapshot:
    """What was running before the test (so only what the test started counts)."""

    tasks: frozenset[int]
    threads: frozenset[int]
    children: frozenset[int]

    @classmethod
    def take(cls, loop: asyncio.AbstractEventLoop | None) -> Snapshot:
        tasks = frozenset(id(t) for t in asyncio.all_tasks(loop)) if loop is not None else frozenset()
        threads = frozenset(t.ident for t in threading.enumerate() if t.ident is not None)
        return cls(tasks, threads, frozenset(p.pid for p in _children()))


def _children() -> list[psutil.Process]:
    try:
        alive = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _pending(loop: asyncio.AbstractEventLoop | None, before: Snapshot) -> list[asyncio.Task[object]]:
    """The test's tasks still pending; not the loop's own closing of async generators someone abandoned
    (made whenever the collector finds one, maybe during another test: its finally runs there)."""
    if loop is None or loop.is_closed():
        return []
    return [
        t
        for t in asyncio.all_tasks(loop)
        if id(t) not in before.tasks
        and not t.done()
        and type(t.get_coro()).__name__ != "async_generator_athrow"
    ]


def _busy_worker(thread: threading.Thread) -> str | None:
    """What an executor worker is running (None when it is idle, waiting for work)."""
    frame = sys._current_frames().get(thread.ident or -1)
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    for i, f in enumerate(stack):  # innermost first: the frame that runs the work item's function
        if f.f_code.co_name == "run" and f.f_code.co_filename.endswith(str(Path("futures", "thread.py"))):
            inner = stack[i - 1] if i > 0 else f
            return f"{inner.f_code.co_qualname} at {_where(inner.f_code.co_filename, inner.f_lineno)}"
    return None


def _threads(before: Snapshot) -> list[tuple[threading.Thread, str | None]]:
    """New live threads, each with what it is busy with; allowed ones only when busy."""
    out = []
    for thread in threading.enumerate():
        if thread.ident in before.threads or not thread.is_alive():
            continue
        allowed = any(thread.name.startswith(prefix) for prefix in ALLOWED_THREADS)
        busy = _busy_worker(thread)
        if allowed and busy is None:
            continue
        out.append((thread, busy))
    return out


def _where(filename: str, line: int | None) -> str:
    path = Path(filename)
    for root in (Path.cwd(), *map(Path, sys.path)):
        try:
            return f"{path.relative_to(root)}:{line}"
        except ValueError:
            continue
    return f"{path}:{line}"


def _await_chain(coro: object) -> list[types.FrameType]:
    """The frames of a suspended coroutine and of what it awaits, outermost first."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def describe_task(task: asyncio.Task[object]) -> str:
    """A task as a leak report names it: its name, its coroutine (file and line it is at) and, when it
    waits deeper down, the innermost function it waits in."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    frames = _await_chain(coro)
    if not frames:
        return f"task {task.get_name()!r}: {name}"
    outer, inner = frames[0], frames[-1]
    text = f"task {task.get_name()!r}: {name} at {_where(outer.f_code.co_filename, outer.f_lineno)}"
    if inner is not outer:
        where = _where(inner.f_code.co_filename, inner.f_lineno)
        text += f", waiting in {inner.f_code.co_qualname} at {where}"
    return text


def _describe_thread(thread: threading.Thread, busy: str | None) -> str:
    target = getattr(thread, "_target", None)
    runs = busy or (
        getattr(target, "__qualname__", None) if target is not None else type(thread).__qualname__
    )
    return f"thread {thread.name!r} (daemon={thread.daemon}): {runs}"


def _describe_process(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())[:200]
    except psutil.Error:
        cmd = "?"
    return f"process {proc.pid}: {cmd}"


def settle(loop: asyncio.AbstractEventLoop | None, before: Snapshot, timeout: float = SETTLE_S) -> None:
    """Give what is ending time to end: run the (idle) loop until the test's tasks are done, and wait
    for its threads and processes, up to ``timeout`` in all. Returns at once when nothing is left."""
    deadline = time.monotonic() + timeout

    async def tasks_done() -> None:
        this = asyncio.current_task()  # pending itself while it waits: not what it waits for
        while [t for t in _pending(loop, before) if t is not this] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    if loop is not None and not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(tasks_done())
    while (_threads(before) or _new_children(before)) and time.monotonic() < deadline:
        time.sleep(0.02)


def _new_children(before: Snapshot) -> list[psutil.Process]:
    return [p for p in _children() if p.pid not in before.children]


def leaks(loop: asyncio.AbstractEventLoop | None, before: Snapshot) -> list[str]:
    """What the test left running (after `settle`), one line each; empty when nothing."""
    found: Iterable[str] = (
        *(describe_task(t) for t in _pending(loop, before)),
        *(_describe_thread(t, busy) for t, busy in _threads(before)),
        *(_describe_process(p) for p in _new_children(before)),
    )
    return sorted(found)


class AsyncioErrors(logging.Handler):
    """What asyncio itself logs as an error while the test runs: a task destroyed while still pending
    (it was dropped, not ended), an exception no one retrieved, a callback that raised. Each is a task
    the test or the product let go of, so it is reported with the leaks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []
        self._logger = logging.getLogger("asyncio")

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        self.found.append(f"asyncio logged: {text[:400]}")

    def __enter__(self) -> AsyncioErrors:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
