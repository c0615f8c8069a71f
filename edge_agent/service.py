"""An agent on the household mesh: serves its local models to peers and routes its own requests.

Composition root for mesh + engines: the MeshEndpoint moves envelopes, the Agent runs models, the
Router decides where each request runs. Also used by one-shot CLI commands (`hearth chat`, `hearth
peers`) as a non-serving client of the same household.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.engines.interfaces import EmbedRequest, GenerateRequest
from edge_agent.errors import NoLocalModelError
from edge_agent.mesh import topics
from edge_agent.mesh.broker import EmbeddedBroker
from edge_agent.mesh.connect import member_transport
from edge_agent.mesh.endpoint import MeshEndpoint
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.node import MeshNode
from edge_agent.mesh.protocol import Chunk, Offer, Presence, Request
from edge_agent.mesh.state import HouseholdState
from edge_agent.models.selection import Plan
from edge_agent.profiles.model import FirmwareProfile
from edge_agent.router import Router
from edge_agent.tasks import Task

log = logging.getLogger(__name__)

_BENCH_PROMPT = "Name three fruits."
_BENCH_TEXTS = ["Turn off the kitchen lights.", "Is the fridge door open?", "Play some music.",
                "What's the weather tomorrow?"] * 2  # fmt: skip


class MeshService:
    def __init__(
        self,
        config: AgentConfig,
        profile: FirmwareProfile,
        plan: Plan,
        home: Path,
        *,
        agent: Agent | None = None,
        serve: bool = True,
        client_id_suffix: str = "",
    ) -> None:
        self.config = config
        self.profile = profile
        self.plan = plan
        self.agent = agent
        self.serve = serve and agent is not None
        self.state = HouseholdState(home)
        self.membership, self.household = self.state.membership()
        self.certificate: DeviceCertificate = self.household.certificate
        self.offers: dict[Task, Offer] = {}
        self.broker: EmbeddedBroker | None = None
        will = (topics.presence(self.membership.household_id, self.certificate.device_id), b"")
        self.transport = member_transport(
            config.mesh,
            self.state.dir,
            self.certificate.device_id + client_id_suffix,
            will=will if self.serve else None,
        )
        self.node = MeshNode(
            self.state.identity,
            self.membership,
            self.transport,
            self.state.counters_dir,
            group_key=bytes.fromhex(self.household.group_key),
            group_epoch=self.household.group_epoch,
            past_group_keys=self.household.group_keys(),
        )
        self.endpoint = MeshEndpoint(
            self.node,
            presence=self.presence if self.serve else None,
            handler=self._handle if self.serve else None,
            presence_interval_s=config.mesh.presence_interval_s,
            on_group_key=self._save_group_key,
        )
        self.router = Router(
            plan=plan,
            policy=config.routing,
            local=agent,
            endpoint=self.endpoint,
            local_offers=self.offers,
            local_name=config.agent.name,
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> MeshService:
        if self.config.mesh.embedded_broker:
            self.broker = EmbeddedBroker(*self.config.mesh.host_port)
            await self.broker.start()
        if self.serve and self.config.mesh.self_benchmark:
            await self.self_benchmark()
        await self.endpoint.__aenter__()
        await self.endpoint.wait_connected(10.0)
        if not self.serve:
            await self._introduce_client()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.endpoint.close()
        self.state.remember(self.membership)
        if self.broker is not None:
            await self.broker.stop()

    async def _introduce_client(self) -> None:
        """A one-shot client (no will, no retained advert) sends one presence so peers learn its
        certificate, unless this device's own agent is already advertising it."""
        await asyncio.sleep(0.2)  # retained adverts arrive right after subscribing
        if not self.endpoint.own_presence_seen:
            await self.endpoint.node.broadcast(
                topics.presence(self.membership.household_id, self.certificate.device_id),
                self._presence_message().model_dump_json().encode(),
            )

    async def wait_for_peers(self, task: Task, timeout: float) -> None:
        """Wait until some peer offers ``task`` (or ``timeout``), then measure RTT to the candidates."""
        await self.endpoint.wait_until(lambda: any(p.offer(task) for p in self.endpoint.peers.all()), timeout)
        await asyncio.gather(*(self.endpoint.ping(p) for p in self.endpoint.peers.all() if p.offer(task)))

    # -- presence -------------------------------------------------------------------------------------

    def _presence_message(self) -> Presence:
        used = self.agent.models.used_mb if self.agent else 0.0
        return Presence(
            certificate=self.certificate,
            crl=self.membership.crl,
            profile=self.profile.id,
            device_class=self.profile.device_class,
            offers=[o for t, o in self.offers.items() if t in self.certificate.serves] if self.serve else [],
            queue_depth=self.endpoint.queue_depth + self.router.local_in_flight,
            free_model_ram_mb=max(0, int(self.profile.model_ram_budget_mb - used)),
            interval_s=self.config.mesh.presence_interval_s,
        )

    def presence(self) -> Presence:
        self._refresh_household()
        return self._presence_message()

    def _refresh_household(self) -> None:
        """Pick up a revocation made by `hearth household revoke` while we run: the new CRL, and on
        the hub the rotated group key, which it then seals to every remaining member."""
        try:
            data = self.state.load()
        except Exception:  # a half-written file is retried next interval
            return
        if data.crl.version > self.membership.crl_version:
            self.membership.apply_revocations(data.crl)
        if self.node.use_group_key(bytes.fromhex(data.group_key), data.group_epoch):
            log.info("household group key rotated to epoch %d", data.group_epoch)
            self.endpoint.distribute_group_key()

    def _save_group_key(self, key: bytes, epoch: int) -> None:
        self.state.save(self.state.load().with_group_key(key, epoch))

    async def self_benchmark(self) -> None:
        """Measure each local task, so routing (ours, and peers' for what we serve) uses real speeds."""
        assert self.agent is not None
        for task in self.plan.tasks:
            tp = self.plan.for_task(task)
            if tp.mode != "local" or tp.chosen is None:
                continue
            t0 = time.perf_counter()
            if task == "generate":
                req = GenerateRequest.from_prompt(_BENCH_PROMPT, max_tokens=24)
                runs = []
                for _ in range(3):  # the first run loads the model; keep the best of the others
                    async for chunk in self.agent.generate(req):
                        if chunk.stats is not None:
                            runs.append(chunk.stats)
                stats = max(runs[1:], key=lambda s: s.decode_tok_s)
                self.offers[task] = Offer(task=task, pack=tp.chosen.pack_id, rate=stats.decode_tok_s,
                                          first_ms=stats.ttft_ms)  # fmt: skip
            elif task == "embed":
                await self.agent.embed(EmbedRequest(texts=_BENCH_TEXTS[:1]))
                t1 = time.perf_counter()
                await self.agent.embed(EmbedRequest(texts=_BENCH_TEXTS[:1]))
                first = time.perf_counter() - t1
                t2 = time.perf_counter()
                await self.agent.embed(EmbedRequest(texts=_BENCH_TEXTS))
                rate = len(_BENCH_TEXTS) / (time.perf_counter() - t2)
                self.offers[task] = Offer(task=task, pack=tp.chosen.pack_id, rate=rate, first_ms=first * 1000)
            else:
                continue
            log.info("self-benchmark %s: %s (%.1f s)", task, self.offers[task], time.perf_counter() - t0)

    # -- serving --------------------------------------------------------------------------------------

    async def _handle(self, req: Request, requester: DeviceCertificate) -> AsyncGenerator[Chunk, None]:
        assert self.agent is not None
        log.info("serving %s for %s", req.task, requester.name)
        if req.task == "generate":
            request = GenerateRequest.model_validate(req.body)
            request.validate_text()
            async with contextlib.aclosing(self.agent.generate(request)) as chunks:
                async for c in chunks:
                    body = c.stats.model_dump(mode="json") if c.stats else None
                    yield Chunk(id=req.id, seq=0, text=c.text, token_ids=c.token_ids,
                                final=c.stats is not None, body=body)  # fmt: skip
        elif req.task == "embed":
            result = await self.agent.embed(EmbedRequest.model_validate(req.body))
            yield Chunk(id=req.id, seq=0, final=True, body=result.model_dump(mode="json"))
        else:
            raise NoLocalModelError(f"{req.task} is not served over the mesh yet")
