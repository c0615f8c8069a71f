"""Offload over a real Mosquitto: a fridge panel's chat is served by the hub and streamed back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rigs.brokers import Mosquitto, run_mosquitto
from benchmarks.rigs.meshkit import TwoHubs, config, crash, provision, service, watchdog
from edge_agent.client.schemas import EmbedRequest, GenerateRequest
from edge_agent.engines.generate import GenerateEngine
from edge_agent.models.store import PackStore
from tests.support.meshsim import until

pytestmark = pytest.mark.slow  # a real Mosquitto, agents on the built packs

PROMPT = "Describe a kitchen in three sentences."


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


def reference(engine: GenerateEngine, max_tokens: int = 48, min_tokens: int = 0) -> str:
    text, _ = engine.complete(
        GenerateRequest.from_prompt(PROMPT, max_tokens=max_tokens, min_tokens=min_tokens)
    )
    return text


async def test_fridge_chat_is_served_by_the_hub_and_streamed_back(
    tmp_path: Path, broker: Mosquitto, store: PackStore, llm_int4: GenerateEngine
) -> None:
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    hub = service(tmp_path / "hub", config("hub", broker.port, "hub"), store)
    # prefer_local as config/fridge-panel.toml: embeddings stay home even if the hub measured faster.
    fridge = service(
        tmp_path / "fridge", config("fridge", broker.port, "fridge-panel", prefer_local=True), store
    )
    assert fridge.plan.for_task("generate").mode == "offload-only"
    async with hub, fridge:
        assert hub.mesh.offers["generate"].rate > 10  # measured by the self-benchmark
        await fridge.wait_for_peers("generate", timeout=5)
        routed = fridge.router.generate(GenerateRequest.from_prompt(PROMPT, max_tokens=48))
        assert routed.decision.ranked[0].name == "hub", routed.decision.explain()
        assert any("offload-only" in (c.excluded or "") for c in routed.decision.excluded)
        chunks = [c async for c in routed]
        assert routed.served_by == "hub" and routed.failovers == 0
        assert "".join(c.text for c in chunks) == reference(llm_int4)
        assert routed.stats is not None and routed.stats.completion_tokens > 10
        # Embeddings run on the fridge itself (its plan has a local int8 MiniLM).
        result, served_by = await fridge.router.embed(EmbedRequest(texts=["The fridge door is open."]))
        assert served_by.endswith("(local)") and result.dim == 384
        assert hub.mesh.node.dropped == {} and fridge.mesh.node.dropped == {}


FAILOVER_TRIALS = 16
"""Each kill point once, 16 of them spread over 1..28 tokens (benchmarks.failover runs 200 trials)."""


async def test_killing_the_serving_peer_mid_stream_fails_over_without_gap_or_repeat(
    tmp_path: Path, broker: Mosquitto, store: PackStore, llm_int4: GenerateEngine
) -> None:
    rig = TwoHubs.create(tmp_path, broker.port, store)
    provision(tmp_path / "hub-a", tmp_path / "fridge", "fridge", "fridge-panel")
    fridge = service(tmp_path / "fridge", config("fridge", broker.port, "fridge-panel"), store)
    # min_tokens: the answer outlasts every kill point (1..28 tokens), whatever the model would say.
    request = GenerateRequest.from_prompt(PROMPT, max_tokens=48, min_tokens=40)
    expected = reference(llm_int4, min_tokens=40)
    served_first: list[str] = []
    try:
        async with rig.hubs["hub-a"], rig.hubs["hub-b"], fridge:
            rig.offers.update(rig.hubs["hub-a"].mesh.offers)
            for trial in range(FAILOVER_TRIALS):
                async with watchdog(90, f"trial {trial}"):
                    await fridge.wait_for_peers("generate", timeout=5)
                    kill_after = 1 + (trial * 5) % 28  # tokens received before the serving hub dies
                    routed = fridge.router.generate(request)
                    text, seen = "", 0
                    victim = None
                    async for chunk in routed:
                        text += chunk.text
                        seen += len(chunk.token_ids)
                        if victim is None and seen >= kill_after:
                            victim = routed.served_by
                            served_first.append(victim)
                            await crash(rig.hubs[victim])
                    assert victim is not None
                    assert text == expected, f"trial {trial}: killed {victim} after {kill_after} tokens"
                    assert routed.failovers == 1 and routed.served_by != victim, routed.attempts
                    assert await rig.revive(victim, fridge)
    finally:
        await rig.aclose()
    assert served_first[:4] == ["hub-a", "hub-b", "hub-a", "hub-b"] or served_first[:4] == [
        "hub-b",
        "hub-a",
        "hub-b",
        "hub-a",
    ]  # each hub died mid-stream and each resumed the other's stream
    assert fridge.mesh.node.dropped == {}


async def test_broker_restart_mid_stream_reconnects_and_the_stream_completes(
    tmp_path: Path, store: PackStore, llm_int4: GenerateEngine
) -> None:
    from benchmarks.rigs.brokers import free_port

    port = free_port()
    provision(tmp_path / "hub", tmp_path / "hub", "hub", "hub")
    provision(tmp_path / "hub", tmp_path / "fridge", "fridge", "fridge-panel")
    # One token per chunk and an answer that outlasts both restart points (see the failover test).
    hub = service(tmp_path / "hub", config("hub", port, "hub", coalesce_ms=0), store)
    fridge = service(tmp_path / "fridge", config("fridge", port, "fridge-panel"), store)
    expected = reference(llm_int4, min_tokens=40)
    broker = run_mosquitto(tmp_path / "broker", port=port)
    mosq = broker.__enter__()
    try:
        async with hub, fridge:
            for restart_after in (3, 20):
                await fridge.wait_for_peers("generate", timeout=5)
                request = GenerateRequest.from_prompt(PROMPT, max_tokens=48, min_tokens=40)
                routed = fridge.router.generate(request)
                text, seen, restarted = "", 0, False
                async for chunk in routed:
                    text += chunk.text
                    seen += len(chunk.token_ids)
                    if not restarted and seen >= restart_after:
                        restarted = True
                        broker.__exit__(None, None, None)  # SIGTERM, waits for the PID to exit
                        assert mosq.proc.poll() is not None
                        up = hub.mesh.endpoint.connected, fridge.mesh.endpoint.connected  # both see it go
                        assert await until(lambda up=up: not any(e.is_set() for e in up), 10)
                        broker = run_mosquitto(tmp_path / "broker", port=port)
                        mosq = broker.__enter__()
                assert restarted and text == expected
                assert routed.served_by == "hub" and routed.failovers >= 1
                # Mosquitto fires wills as it shuts down, so the first attempt ends as "hub left" or
                # "link dropped"; either way the hub re-announces itself and the stream resumes there.
                assert routed.attempts[0].error and routed.attempts[-1].error is None, routed.attempts
    finally:
        broker.__exit__(None, None, None)
