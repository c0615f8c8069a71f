"""Owns loaded engines: lazy load on first use, unload when idle, never past the RAM budget."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from edge_agent.engines.base import Engine, EngineOptions, engine_class
from edge_agent.errors import BudgetExceededError, NoLocalModelError
from edge_agent.models.pack import PackManifest
from edge_agent.models.selection import Plan
from edge_agent.models.store import InstalledPack, PackStore
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    pack: InstalledPack
    engine: Engine[Any, Any]
    last_used: float
    in_use: int = 0


def batch_tokens_for(profile: FirmwareProfile, configured: int | None = None) -> int:
    """Activation memory grows with a batch's padded tokens: small devices batch less."""
    return configured or (512 if profile.model_ram_budget_mb < 512 else 2048)


def effective_threads(profile: FirmwareProfile, configured: int | None = None) -> int:
    """Threads to use: the config's, else the profile's, capped at this host's cores.

    A profile describes its device; when it runs on a smaller host, oversubscribing cores only slows it.
    """
    return min(configured or profile.threads, os.cpu_count() or 1)


class ModelManager:
    def __init__(
        self,
        store: PackStore,
        profile: FirmwareProfile,
        plan: Plan,
        *,
        idle_unload_s: float = 300.0,
        threads: int | None = None,
        max_embed_batch: int = 256,
        verify_on_load: bool = True,
        translate_batch_tokens: int | None = None,
    ) -> None:
        self.store = store
        self.profile = profile
        self.plan = plan
        self.idle_unload_s = idle_unload_s
        self.threads = effective_threads(profile, threads)
        self.max_embed_batch = max_embed_batch
        self.verify_on_load = verify_on_load
        self.translate_batch_tokens = batch_tokens_for(profile, translate_batch_tokens)
        self.options = EngineOptions(self.threads, max_embed_batch, self.translate_batch_tokens)
        self._loaded: dict[str, _Loaded] = {}  # by plan slot: "embed", "translate:en-pt"
        self._lock = asyncio.Lock()

    @property
    def budget_mb(self) -> int:
        return self.profile.model_ram_budget_mb

    @property
    def used_mb(self) -> float:
        return sum(entry.pack.manifest.peak_ram_mb for entry in self._loaded.values())

    def loaded_tasks(self) -> list[str]:
        """Plan slots with a loaded engine."""
        return list(self._loaded)

    def require_local(self, task: Task, pair: str | None = None) -> PackManifest:
        """The pack the plan runs ``task`` with here, or NoLocalModelError naming why there is none."""
        tp = self.plan.for_task(task, pair)
        if tp.chosen is None:
            detail = "; ".join(f"{r.pack_id}: {r.reason}" for r in tp.rejected) or tp.reason
            what = f"{task} {pair}" if pair else task
            raise NoLocalModelError(f"'{what}' cannot run on {self.profile.id} ({tp.mode}): {detail}")
        return tp.chosen

    async def _ensure(self, task: Task, pair: str | None) -> _Loaded:
        tp = self.plan.for_task(task, pair)
        async with self._lock:
            if tp.slot in self._loaded:
                return self._loaded[tp.slot]
            pack = self.store.get(self.require_local(task, pair).pack_id)
            need = pack.manifest.peak_ram_mb
            if need > self.budget_mb:
                raise BudgetExceededError(
                    f"{pack.pack_id} needs {need:.0f} MB, more than the whole budget of {self.budget_mb} MB"
                )
            # Make room by unloading idle engines, least recently used first.
            for other, entry in sorted(self._loaded.items(), key=lambda kv: kv[1].last_used):
                if self.used_mb + need <= self.budget_mb:
                    break
                if entry.in_use == 0:
                    log.info("unloading %s to make room for %s", entry.pack.pack_id, pack.pack_id)
                    del self._loaded[other]
            if self.used_mb + need > self.budget_mb:
                raise BudgetExceededError(
                    f"loading {pack.pack_id} ({need:.0f} MB) would pass the budget of {self.budget_mb} MB; "
                    f"{self.used_mb:.0f} MB is held by busy models ({', '.join(self._loaded)})"
                )
            if self.verify_on_load:
                await asyncio.to_thread(self.store.verify, pack)
            engine = await asyncio.to_thread(self._load, task, pack)
            log.info("loaded %s (%.0f MB of %d MB budget)", pack.pack_id, need, self.budget_mb)
            entry = _Loaded(pack, engine, time.monotonic())
            self._loaded[tp.slot] = entry
            return entry

    def _load(self, task: Task, pack: InstalledPack) -> Engine[Any, Any]:
        return engine_class(task).from_pack(pack.path, pack.manifest.task_info, self.options)

    @asynccontextmanager
    async def use(self, task: Task, pair: str | None = None) -> AsyncIterator[Engine[Any, Any]]:
        """Borrow the engine for ``task`` (and language ``pair``), loading it if needed; it is not
        unloaded while borrowed."""
        entry = await self._ensure(task, pair)
        entry.in_use += 1
        try:
            yield entry.engine
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()

    def retire(self, pack_id: str) -> list[str]:
        """Drop the engines loaded from ``pack_id`` (a newer version was activated): requests already
        running keep the engine they borrowed; the next one loads the new pack."""
        gone = [slot for slot, entry in self._loaded.items() if entry.pack.pack_id == pack_id]
        for slot in gone:
            del self._loaded[slot]
        return gone

    def unload_idle(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        gone = [
            t for t, e in self._loaded.items() if e.in_use == 0 and now - e.last_used >= self.idle_unload_s
        ]
        for t in gone:
            log.info("unloading idle %s", self._loaded[t].pack.pack_id)
            del self._loaded[t]
        return gone

    async def reap_idle_forever(self) -> None:
        """Background task: unload engines idle longer than ``idle_unload_s``."""
        interval = max(1.0, min(30.0, self.idle_unload_s / 4))
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                self.unload_idle()
