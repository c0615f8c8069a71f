"""The agent: composition root that owns the model manager and its background tasks.

Engines are blocking C++ calls; they run in worker threads and their token streams are bridged into
asyncio queues, so the event loop (and later the mesh) never stalls behind inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator
from types import TracebackType

from edge_agent.config import AgentConfig
from edge_agent.engines.interfaces import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.engines.manager import ModelManager
from edge_agent.errors import InvalidRequestError
from edge_agent.models.selection import Plan, plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles.model import FirmwareProfile

log = logging.getLogger(__name__)
_DONE = object()


class Agent:
    def __init__(self, config: AgentConfig, profile: FirmwareProfile, store: PackStore) -> None:
        self.config = config
        self.profile = profile
        self.store = store
        self.plan: Plan = plan_for_profile(profile, [p.manifest for p in store.list()])
        self.models = ModelManager(
            store,
            profile,
            self.plan,
            idle_unload_s=config.engines.idle_unload_s,
            threads=config.engines.threads,
            max_embed_batch=config.engines.max_embed_batch,
            verify_on_load=config.engines.verify_on_load,
            translate_batch_tokens=config.engines.translate_batch_tokens,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Agent:
        self._tasks.append(asyncio.create_task(self.models.reap_idle_forever(), name="idle-reaper"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        """Stream a chat completion. Cancelling the consumer stops generation at the next token."""
        async with self.models.use("generate") as engine:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[object] = asyncio.Queue()
            cancel = threading.Event()

            def work() -> None:
                try:
                    for chunk in engine.stream(request, cancel):
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
                except BaseException as exc:  # forwarded to the consumer
                    loop.call_soon_threadsafe(queue.put_nowait, exc)
                finally:
                    loop.call_soon_threadsafe(queue.put_nowait, _DONE)

            worker = loop.run_in_executor(None, work)
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, GenerateChunk)
                    yield item
            finally:
                cancel.set()
                await worker

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        async with self.models.use("embed") as engine:
            result: EmbedResult = await asyncio.to_thread(engine.embed, request)
            return result

    async def translate(self, request: TranslateRequest) -> TranslateResult:
        request.validate_text()
        known = self.plan.pairs(mode=None)
        if request.pair not in known:
            arrows = ", ".join(p.replace("-", "→") for p in known) or "none; run `hearth models build`"
            raise InvalidRequestError(
                f"no translation model for {request.source}→{request.target} here (available: {arrows})"
            )
        async with self.models.use("translate", request.pair) as engine:
            result: TranslateResult = await asyncio.to_thread(engine.translate, request)
            return result
