"""The one interface every inference engine implements, and how the manager finds a task's engine.

The ModelManager loads engines only through ``Engine.from_pack`` and the Agent runs them only through
``Engine.run``, so a new task's engine plugs in without either of them changing. The engine for task
``t`` is the ``Engine`` subclass with ``task = "t"`` in ``edge_agent/engines/<t>.py``: found by that
convention rather than a table, so adding a task never means editing a list here. Stays free of
onnxruntime and numpy (engine modules are imported only when a pack is loaded).

There is no ``close()``: engines hold memory and onnxruntime sessions the garbage collector frees once
the manager drops them, and a call still running in a worker thread keeps its engine alive until then.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from edge_agent.errors import NoLocalModelError
from edge_agent.tasks import Task

RequestT = TypeVar("RequestT")
ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class EngineOptions:
    """What this device decides about running a pack (its manifest's ``task_info`` says the rest)."""

    threads: int
    max_embed_batch: int = 256
    translate_batch_tokens: int = 2048


class Engine(ABC, Generic[RequestT, ItemT]):
    """A loaded pack serving one task. Blocking: run it from a worker thread."""

    task: ClassVar[Task]

    @classmethod
    @abstractmethod
    def from_pack(cls, pack_dir: Path, task_info: dict[str, Any], options: EngineOptions) -> Self:
        """Load the pack in ``pack_dir`` (already verified by the manager)."""

    @abstractmethod
    def run(self, request: RequestT, cancel: threading.Event | None = None) -> Iterator[ItemT]:
        """Answer ``request``: a streaming task yields its chunks (stopping soon after ``cancel`` is set),
        any other task yields exactly one result."""


def engine_class(task: Task) -> type[Engine[Any, Any]]:
    """The engine class for ``task`` (imports its module, and so onnxruntime, on first use)."""
    name = f"edge_agent.engines.{task}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise NoLocalModelError(f"no local engine for task '{task}' yet") from None
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, Engine) and getattr(value, "task", None) == task
    ]
    if len(found) != 1:
        raise NoLocalModelError(f"{name} should define one Engine for '{task}', found {len(found)}")
    return found[0]
