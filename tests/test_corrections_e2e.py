"""Shared corrections end to end on a real Mosquitto with real agents and the real Bergamot pack: the
fridge's user corrects a sentence; the hub answers it with the correction (inside a longer text too),
still after a restart; withdrawn, the model's own translation is back."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.rigs.brokers import run_mosquitto
from benchmarks.rigs.meshkit import config, provision, service
from edge_agent.client.schemas import TranslateRequest
from edge_agent.models.store import PackStore

pytestmark = pytest.mark.slow  # a real Mosquitto, agents on the built packs

SENTENCE = "Turn on the oven."
FIXED = "Liga já o forno."


async def test_a_correction_beats_the_model_on_every_device_survives_a_restart_and_can_be_withdrawn(
    tmp_path: Path, store: PackStore
) -> None:
    hub_home, fridge_home = tmp_path / "hub", tmp_path / "fridge"
    provision(hub_home, hub_home, "hub", "hub")
    provision(hub_home, fridge_home, "fridge", "fridge-panel", may_correct=True)  # `invite --may-correct`
    one = TranslateRequest(texts=[SENTENCE], source="en", target="pt")
    two = TranslateRequest(texts=[f"{SENTENCE} Good night."], source="en", target="pt")
    with run_mosquitto(tmp_path / "broker") as broker:
        hub_cfg, fridge_cfg = config("hub", broker.port, "hub"), config("fridge", broker.port, "fridge-panel")
        fridge = service(fridge_home, fridge_cfg, store)
        async with fridge:
            async with service(hub_home, hub_cfg, store) as hub:
                model_says, _ = await hub.translate(one)
                assert model_says.translations[0] != FIXED and model_says.stats.corrected == 0
                both_before, _ = await hub.translate(two)
                record = await fridge.correct("en-pt", SENTENCE, FIXED, model_says.model)
                hub_sync = hub.mesh.correction_sync
                assert await hub.mesh.endpoint.wait_until(
                    lambda: record.id in hub_sync.corrections.records, 10
                )
                for agent in (hub, fridge):
                    result, served = await agent.translate(one)
                    assert result.translations == [FIXED] and result.stats.corrected == 1
                    assert served == "household correction"
                mixed, _ = await hub.translate(two)  # only the corrected sentence changes
                assert mixed.translations[0] == both_before.translations[0].replace(
                    model_says.translations[0], FIXED
                )
                assert mixed.stats.corrected == 1
            # The hub restarts: its copy was persisted.
            async with service(hub_home, hub_cfg, store) as hub:
                result, _ = await hub.translate(one)
                assert result.translations == [FIXED]
                [kept] = [r for r in await hub.corrections() if r.kind == "correction"]
                assert (kept.source, kept.target, kept.pair, kept.model, kept.author) == (
                    SENTENCE,
                    FIXED,
                    "en-pt",
                    model_says.model,
                    fridge.mesh.certificate.device_id,
                )  # the (source, target, pair, model, author, time) a fine-tuning step would use
                back = await fridge.withdraw_correction(record.id)
                assert await hub.mesh.endpoint.wait_until(
                    lambda: back.id in hub.mesh.correction_sync.corrections.records, 10
                )
                result, _ = await hub.translate(one)
                assert result.translations == model_says.translations and result.stats.corrected == 0
