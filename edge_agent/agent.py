"""The agent: composition root that owns the model manager and its background tasks.

Engines are blocking C++ calls; they run in worker threads and their token streams are bridged into
asyncio queues, so the event loop (and later the mesh) never stalls behind inference. One ``run`` serves
every task through its spec (edge_agent.task_specs) and its engine (edge_agent.engines.base.Engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import cast

from edge_agent.client.schemas import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.config import AgentConfig
from edge_agent.engines.manager import ModelManager
from edge_agent.errors import EngineError
from edge_agent.models.selection import Plan
from edge_agent.models.store import PackStore
from edge_agent.packs.host_gate import HostGate, gated_plan
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.supervision import Supervisor
from edge_agent.task_specs import EMBED, GENERATE, TRANSLATE, ItemT, ReqT, TaskSpec

log = logging.getLogger(__name__)
_DONE = object()


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        profile: FirmwareProfile,
        store: PackStore,
        *,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.supervisor = supervisor or Supervisor()
        self.profile = profile
        self.store = store
        gate = HostGate(store, threads=config.engines.threads or 1) if config.engines.quality_gate else None
        self.plan: Plan = gated_plan(profile, store.list(), gate)[0]
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
        reaper = self.supervisor.supervise("idle-reaper", self.models.reap_idle_forever)
        self._tasks.append(asyncio.create_task(reaper, name="idle-reaper"))
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

    async def run(self, spec: TaskSpec[ReqT, ItemT], request: ReqT) -> AsyncGenerator[ItemT, None]:
        """Run ``request`` on this device's engine for ``spec``'s task. A streaming task's chunks arrive as
        the engine makes them; cancelling the consumer stops it at the next one.

        The request was validated where it entered this device (the router for its own requests, the
        registry's ``serve`` for a peer's; the engines check their own input too): here it is only
        matched to a model, InvalidRequestError when none serves its variant (language pair)."""
        variant = spec.variant(request) if spec.variant is not None else None
        if variant is not None:
            spec.require_variant(
                request, self.plan.pairs(spec.name, mode=None), "here", "none; run `hearth models build`"
            )
        run = self._stream if spec.streaming else self._once
        async with contextlib.aclosing(run(spec, request, variant)) as items:
            async for item in items:
                yield item

    async def _once(
        self, spec: TaskSpec[ReqT, ItemT], request: ReqT, variant: str | None
    ) -> AsyncGenerator[ItemT, None]:
        async with self.models.use(spec.name, variant) as engine:
            items: list[ItemT] = await asyncio.to_thread(lambda: list(engine.run(request)))
        for item in items:
            yield item

    async def _stream(
        self, spec: TaskSpec[ReqT, ItemT], request: ReqT, variant: str | None
    ) -> AsyncGenerator[ItemT, None]:
        async with self.models.use(spec.name, variant) as engine:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[object] = asyncio.Queue()
            cancel = threading.Event()

            def work() -> None:
                try:
                    for chunk in engine.run(request, cancel):
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
                    yield cast(ItemT, item)
            finally:
                cancel.set()
                await worker

    async def call(self, spec: TaskSpec[ReqT, ItemT], request: ReqT) -> ItemT:
        """The result of a one-shot task."""
        async with contextlib.aclosing(self.run(spec, request)) as items:
            async for item in items:
                return item
        raise EngineError(f"the {spec.name} engine returned nothing")

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        """Stream a chat completion. Cancelling the consumer stops generation at the next token."""
        return self.run(GENERATE, request)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return await self.call(EMBED, request)

    async def translate(self, request: TranslateRequest) -> TranslateResult:
        return await self.call(TRANSLATE, request)
