"""Local or offload, per request, and failover mid-stream.

Each candidate (this device, or a live peer offering the task) gets an expected completion time:

    local:  queue * job + first_ms + work / rate
    peer:   rtt + queue * job + first_ms + work / rate       (rate and first_ms measured by the peer)

Policy filters first (``never_offload``, ``peer_classes``, ``local-only``, ``prefer_local``), then the
fastest expected candidate inside the deadline wins. If the serving peer dies, leaves or stalls, the
router resumes on the next candidate with the prompt plus every token already streamed, so the caller
sees one stream with nothing lost or repeated (a Petals idea, kept inside the privacy boundary).

Task knowledge (a request's size, checks, language pairs, how it runs here and travels to a peer) comes
from the task registry (edge_agent.task_specs): one failover loop serves every task. Only generate's
continuation (resume with the tokens already streamed) is specific, in ``RoutedStream``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from edge_agent.client.schemas import (
    Continuation,
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerateStats,
    TranslateRequest,
    TranslateResult,
)
from edge_agent.errors import (
    InvalidRequestError,
    LinkDownError,
    NoRouteError,
    PathDownError,
    PeerLostError,
    PeerRefusedError,
    TransportError,
)
from edge_agent.mesh.interfaces import PeerDirectory
from edge_agent.mesh.peers import Peer
from edge_agent.mesh.protocol import MAX_QUEUE, Chunk, Offer
from edge_agent.models.selection import Plan
from edge_agent.router_settings import RouterSettings
from edge_agent.routing_decision import UNMEASURED, UNMEASURED_MS, Attempt, Candidate, Decision
from edge_agent.task_specs import EMBED, GENERATE, TRANSLATE, ItemT, ReqT, TaskSpec, spec_for
from edge_agent.tasks import Task

log = logging.getLogger(__name__)

DEFAULT_RTT_MS = 5.0
MAX_ESTIMATE_MS = 1e8
"""Longer than any deadline (27 hours): estimates are capped here, below the unmeasured sentinel."""
_RETRYABLE = {"busy", "not-served", "internal", "deadline"}
Source = Callable[["Candidate", ReqT, float], AsyncGenerator[ItemT, None]]
"""Runs (part of) a request on one candidate until a deadline (monotonic), yielding its answer."""


@dataclass
class RoutedStream:
    """One routed answer. Iterate for chunks; afterwards ``attempts`` shows who served which part."""

    router: Router
    request: GenerateRequest
    decision: Decision
    deadline_s: float
    attempts: list[Attempt] = field(default_factory=list)
    stats: GenerateStats | None = None

    @property
    def served_by(self) -> str:
        return self.attempts[-1].served_by if self.attempts else "nobody"

    @property
    def failovers(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def reason(self) -> str:
        return self.decision.reason

    @property
    def lines(self) -> list[str]:
        return self.decision.explain()

    @property
    def hops(self) -> str:
        """Who served which part: "hub-b (failed: hub-b left the mesh) → hub-a"."""
        return " → ".join(a.served_by + (f" (failed: {a.error})" if a.error else "") for a in self.attempts)

    def __aiter__(self) -> AsyncGenerator[GenerateChunk, None]:
        return self.router._run_generate(self)


class Router:
    def __init__(
        self,
        *,
        plan: Plan | None = None,
        policy: RouterSettings,
        local: Any | None = None,
        endpoint: PeerDirectory | None = None,
        local_offers: dict[Task, Offer] | None = None,
        local_name: str = "this device",
    ) -> None:
        self.plan = plan if plan is not None else Plan(local_name, 0)
        """What runs here (none: a member that runs no models, such as Home Assistant)."""
        self.policy = policy
        """Routing policy and limits (`edge_agent.router_settings`; the agent's from its [routing])."""
        self.local = local
        self.endpoint = endpoint
        self.local_offers = local_offers if local_offers is not None else {}
        self.local_name = local_name
        self.local_in_flight = 0
        self.offloaded = 0
        """This device's requests answered by a peer since start (announced in presence)."""

    # -- deciding -------------------------------------------------------------------------------------

    def _estimate(
        self, offer: Offer | None, units: int, queue: int, measured: float | None = None
    ) -> tuple[float, str]:
        """Expected ms. A peer's claimed rate is only a first guess: once we have measured its real
        answers, that measurement caps the claim (a device cannot talk its way into every offloaded
        prompt; it may only make itself look slower)."""
        if offer is None or offer.rate <= 0:
            return float("inf"), UNMEASURED
        rate, source = (min(measured, offer.rate), "measured") if measured else (offer.rate, "claimed")
        queue = max(0, min(queue, MAX_QUEUE))  # bounded on the wire too; clamped so no claim overflows
        job = offer.first_ms + units / rate * 1000
        detail = f"first {offer.first_ms:.0f} ms + {units} at {rate:.0f}/s {source}"
        return min((queue + 1) * job, MAX_ESTIMATE_MS), detail + (f" + queue {queue}" if queue else "")

    def decide(self, task: Task, body: BaseModel, deadline_s: float | None = None) -> Decision:
        """Where ``body`` (a request for ``task``) would run now, candidates ranked, and why not elsewhere."""
        return self._decide(spec_for(task), body, deadline_s)

    def _decide(self, spec: TaskSpec[Any, Any], body: BaseModel, deadline_s: float | None) -> Decision:
        task = spec.name
        deadline_ms = (deadline_s or self.policy.deadline_s) * 1000
        units = spec.work_units(body)
        ranked: list[Candidate] = []
        excluded: list[Candidate] = []
        pair = spec.variant(body) if spec.variant is not None else None
        tp = self.plan.for_task(task, pair)
        if self.local is not None:
            local_ms, detail = self._estimate(self.local_offers.get(task), units, self.local_in_flight)
            cand = Candidate(self.local_name, None, local_ms, detail)
            if tp.mode != "local":
                cand.excluded = f"{tp.mode} here ({tp.reason})"
            elif local_ms == float("inf"):
                cand.expected_ms, cand.detail = UNMEASURED_MS, UNMEASURED
            elif local_ms > deadline_ms:
                cand.excluded = f"expected {local_ms:.0f} ms is past the {deadline_ms:.0f} ms deadline"
            (excluded if cand.excluded else ranked).append(cand)
        now = time.monotonic()
        for peer in self._everyone():
            offer = peer.offer(task)
            cand = Candidate(peer.name, peer, float("inf"), "")
            if offer is None:
                cand.excluded = f"does not serve {task}"
            elif pair is not None and pair not in offer.pairs:
                cand.excluded = f"does not {task} {pair.replace('-', '→')}"
            elif not peer.alive(now):
                cand.excluded = "silent"
            elif peer.banned(now):
                cand.excluded = f"failed recently (retry in {peer.banned_until - now:.0f} s)"
            elif self.policy.mode == "local-only":
                cand.excluded = "policy: local-only"
            elif task in self.policy.never_offload:
                cand.excluded = f"policy: never offload {task}"
            elif self.policy.peer_classes and peer.device_class not in self.policy.peer_classes:
                cand.excluded = f"policy: class {peer.device_class} not in {self.policy.peer_classes}"
            elif not self._still_member(peer):
                cand.excluded = "no longer a household member"
            elif task not in self._own_requests():
                cand.excluded = f"this device's certificate does not allow requesting {task}"
            elif offer.rate <= 0:
                cand.excluded = UNMEASURED  # no estimate to rank it by (not an infinite time)
            else:  # only now is what the peer claims used (policy first: it may not be asked at all)
                rtt = peer.rtt_ms if peer.rtt_ms is not None else DEFAULT_RTT_MS
                ms, detail = self._estimate(offer, units, peer.presence.queue_depth, peer.throughput)
                cand.expected_ms, cand.detail = ms + rtt, f"rtt {rtt:.1f} ms + {detail}"
            if not cand.excluded and cand.expected_ms > deadline_ms:
                cand.excluded = (
                    f"expected {cand.expected_ms:.0f} ms is past the {deadline_ms:.0f} ms deadline"
                )
            (excluded if cand.excluded else ranked).append(cand)
        ranked.sort(key=lambda c: c.expected_ms)
        local_first = self.policy.prefer_local or self.policy.mode == "local-only"
        if self.policy.mode == "offload-first":
            ranked.sort(key=lambda c: c.peer is None)
        elif local_first:
            ranked.sort(key=lambda c: c.peer is not None)
        return Decision(task, ranked, excluded)

    def _everyone(self) -> list[Peer]:
        return self.endpoint.known() if self.endpoint is not None else []

    def _still_member(self, peer: Peer) -> bool:
        return self.endpoint is not None and self.endpoint.is_member(peer.device_id)

    def _own_requests(self) -> list[Task]:
        return self.endpoint.own_requests() if self.endpoint is not None else []

    # -- running --------------------------------------------------------------------------------------

    def _check(self, spec: TaskSpec[ReqT, Any], request: ReqT) -> None:
        """Refuse here what no device could run: invalid input, or a variant nobody has. The one check of
        this device's own request: it travels on typed, and the Agent (or a peer's ``serve``) runs it."""
        spec.validate(request)
        if spec.variant is not None:
            known = set(self.plan.pairs(spec.name, mode=None)) | self._peer_variants(spec.name)
            spec.require_variant(request, sorted(known), "on this device or any peer")

    def generate(self, request: GenerateRequest, deadline_s: float | None = None) -> RoutedStream:
        self._check(GENERATE, request)
        deadline = deadline_s or self.policy.deadline_s
        return RoutedStream(self, request, self._decide(GENERATE, request, deadline), deadline)

    async def _run_generate(self, routed: RoutedStream) -> AsyncGenerator[GenerateChunk, None]:
        tokens: list[int] = []
        shown = ""
        index = 0

        def resume(request: GenerateRequest) -> GenerateRequest:
            if not (tokens or shown):
                return request
            return request.model_copy(
                update={"continuation": Continuation(token_ids=list(tokens), emitted_text=shown)}
            )

        async with contextlib.aclosing(
            self._failover(
                GENERATE,
                routed.request,
                routed.deadline_s,
                routed.decision,
                routed.attempts,
                self._source(GENERATE),
                resume,
                lambda c: len(c.token_ids),  # the tokens this loop already keeps for a resume
            )
        ) as chunks:
            async for chunk in chunks:
                tokens += chunk.token_ids
                shown += chunk.text
                if chunk.stats is not None:
                    routed.stats = chunk.stats.model_copy(
                        update={"completion_tokens": len(tokens) + (chunk.stats.finish_reason == "stop")}
                    )
                # Numbered once: a chunk keeps the number it came with (the engine's here, the exchange
                # layer's ``seq`` from a peer); only after a failover, when the next candidate counts
                # from 0 again, is the caller's count carried on.
                yield chunk if chunk.index == index else chunk.model_copy(update={"index": index})
                index += 1

    async def _failover(
        self,
        spec: TaskSpec[ReqT, ItemT],
        request: ReqT,
        deadline_s: float,
        decision: Decision,
        attempts: list[Attempt],
        source: Source[ReqT, ItemT],
        resume: Callable[[ReqT], ReqT],
        units_of: Callable[[ItemT], int],
    ) -> AsyncGenerator[ItemT, None]:
        """The one failover loop: try the best candidate; if a peer dies, leaves, stalls or refuses
        (retryably), ban it and go on with the next, resuming from what was already received. A drop of
        our own link bans nobody: wait for it to return and resume (the same peer allowed)."""
        deadline = time.monotonic() + deadline_s
        tried: set[str] = set()
        failures = link_drops = 0
        while failures < self.policy.max_attempts and link_drops <= self.policy.max_link_drops:
            options = [c for c in decision.ranked if c.name not in tried]
            if not options and attempts and self.endpoint is not None:
                # Everyone we know failed: give peers a moment to come back (a restarting agent or
                # broker re-announces itself), then decide again.
                await self.endpoint.wait_peers_changed(
                    min(2 * self.policy.stall_timeout_s, max(0.0, deadline - time.monotonic()))
                )
                decision = self._decide(spec, resume(request), max(0.001, deadline - time.monotonic()))
                tried.clear()
                options = decision.ranked
            if not options:
                break
            cand = options[0]
            tried.add(cand.name)
            attempt = Attempt(cand.name if cand.peer else f"{self.local_name} (local)", time.monotonic(), 0)
            attempts.append(attempt)
            part = resume(request)
            units, first_at = 0, 0.0
            try:
                async with contextlib.aclosing(source(cand, part, deadline)) as items:
                    async for item in items:
                        first_at = first_at or time.monotonic()
                        units += units_of(item)
                        yield item
                if cand.peer is not None:
                    self.offloaded += 1
                if cand.peer is not None and self.endpoint is not None:
                    # Streams: the rate after the first item (first_ms is estimated apart); one-shot
                    # answers: the whole round trip.
                    streamed = spec.streaming and units > 1
                    span = time.monotonic() - (first_at if streamed else attempt.started)
                    self.endpoint.succeeded(cand.peer.device_id, units, span)
                return
            except (PeerLostError, LinkDownError, PeerRefusedError) as exc:
                if isinstance(exc, PeerRefusedError) and exc.code == "invalid":
                    raise InvalidRequestError(str(exc)) from None
                if isinstance(exc, PeerRefusedError) and exc.code not in _RETRYABLE:
                    raise
                attempt.error = str(exc)
                log.warning("%s failed (%s); failing over", cand.name, exc)
                if isinstance(exc, PathDownError):
                    # Its direct link broke: the same peer through the broker, now (the exchanges
                    # chose the broker already); a peer that is really gone fails that attempt too.
                    tried.discard(cand.name)
                    link_drops += 1
                    continue
                if isinstance(exc, LinkDownError) and self.endpoint is not None:
                    tried.discard(cand.name)
                    link_drops += 1
                    try:
                        await self.endpoint.wait_connected(max(0.05, deadline - time.monotonic()))
                    except TransportError:
                        break
                    if cand.peer is not None:
                        await self.endpoint.wait_for_presence(
                            cand.peer.device_id, self.policy.stall_timeout_s
                        )
                    continue
                failures += 1
                if cand.peer is not None and self.endpoint is not None:
                    self.endpoint.ban(cand.peer.device_id, self.policy.ban_s)
                decision = self._decide(spec, resume(request), max(0.001, deadline - time.monotonic()))
        errors = "; ".join(f"{a.served_by}: {a.error}" for a in attempts) or decision.reason
        raise NoRouteError(f"no device could finish the request ({errors})")

    def _source(self, spec: TaskSpec[ReqT, ItemT]) -> Source[ReqT, ItemT]:
        """Where a candidate's answer comes from: this device's runner, or a peer's chunks decoded by
        the task's spec (a malformed answer counts as losing that peer)."""

        async def source(cand: Candidate, part: ReqT, deadline: float) -> AsyncGenerator[ItemT, None]:
            if cand.peer is None:
                assert self.local is not None  # only ranked when set
                self.local_in_flight += 1
                try:
                    async with contextlib.aclosing(spec.run_here(self.local, part)) as items:
                        async for item in items:
                            yield item
                finally:
                    self.local_in_flight -= 1
                return
            async with contextlib.aclosing(self._remote(cand.peer, spec, part, deadline)) as msgs:
                async for msg in msgs:
                    try:
                        answer = spec.decode_item(msg)
                    except ValueError as exc:
                        raise PeerLostError(f"{cand.name} sent a malformed answer: {exc}") from None
                    if answer is not None:
                        yield answer

        return source

    def _remote(
        self, peer: Peer, spec: TaskSpec[ReqT, Any], request: ReqT, deadline: float
    ) -> AsyncGenerator[Chunk, None]:
        assert self.endpoint is not None
        return self.endpoint.stream(
            peer,
            spec.name,
            spec.encode_request(request),
            deadline_s=max(0.05, deadline - time.monotonic()),
            stall_s=self.policy.stall_timeout_s,
        )

    async def call(
        self, spec: TaskSpec[ReqT, ItemT], request: ReqT, deadline_s: float | None = None
    ) -> tuple[ItemT, str]:
        """One answer (no stream) to a one-shot task from the best candidate, through the same failover
        loop as generate; returns (result, served by)."""
        self._check(spec, request)
        deadline = deadline_s or self.policy.deadline_s
        attempts: list[Attempt] = []
        decision = self._decide(spec, request, deadline)
        results = [
            r
            async for r in self._failover(
                spec,
                request,
                deadline,
                decision,
                attempts,
                self._source(spec),
                lambda r: r,
                lambda item: spec.units(request, item),
            )
        ]
        if not results:
            raise NoRouteError(decision.reason)
        return results[-1], attempts[-1].served_by

    async def embed(self, request: EmbedRequest, deadline_s: float | None = None) -> tuple[EmbedResult, str]:
        """Embed locally or on a peer, retrying elsewhere if the peer fails; returns (result, served by)."""
        return await self.call(EMBED, request, deadline_s)

    async def translate(
        self, request: TranslateRequest, deadline_s: float | None = None
    ) -> tuple[TranslateResult, str]:
        """Translate locally or on a peer with that language pair, retrying elsewhere if the peer fails;
        returns (result, served by)."""
        return await self.call(TRANSLATE, request, deadline_s)

    def _peer_variants(self, task: Task) -> set[str]:
        if self.endpoint is None:
            return set()
        return {p for peer in self.endpoint.known() if (o := peer.offer(task)) for p in o.pairs}
