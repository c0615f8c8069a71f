"""Translation over a real Mosquitto: offload to the hub, and the household's shared translation memory
(signed entries reused by other devices; forged entries refused; a policy switch turns it off)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rigs.brokers import Mosquitto, run_mosquitto
from benchmarks.rigs.meshkit import config, provision, service
from edge_agent.client.schemas import TranslateRequest
from edge_agent.config import AgentConfig
from edge_agent.errors import InvalidRequestError
from edge_agent.mesh.memory import make_entry
from edge_agent.models.store import PackStore

pytestmark = pytest.mark.slow  # a real Mosquitto, agents on the built packs

TEXT = "The washing machine finished. Please hang the clothes before 18:00."


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


def with_translate(cfg: AgentConfig, **translate: object) -> AgentConfig:
    data = cfg.model_dump()
    data["translate"].update(translate)
    data["mesh"]["self_benchmark"] = cfg.agent.name == "hub"  # only the hub needs measured offers
    return AgentConfig.model_validate(data)


async def test_offload_and_shared_translation_memory(
    tmp_path: Path, broker: Mosquitto, store: PackStore
) -> None:
    for name, profile in [
        ("hub", "hub"),
        ("fridge", "fridge-panel"),
        ("car", "car-headunit"),
        ("phone", "phone"),
    ]:
        provision(tmp_path / "hub", tmp_path / name, name, profile)
    port = broker.port
    hub = service(tmp_path / "hub", with_translate(config("hub", port, "hub")), store)
    # offload-first: the fridge has a local int8 model but hands translation to the hub when it can.
    fridge_cfg = config("fridge", port, "fridge-panel", mode="offload-first")
    fridge = service(tmp_path / "fridge", with_translate(fridge_cfg), store)
    car_cfg = with_translate(config("car", port, "car-headunit"), memory_lookup_ms=2000)
    car = service(tmp_path / "car", car_cfg, store)
    phone_cfg = config("phone", port, "phone", mode="offload-first")
    phone = service(tmp_path / "phone", with_translate(phone_cfg, shared_memory=False), store)
    request = TranslateRequest(texts=[TEXT], source="en", target="pt")
    async with hub, fridge, car, phone:
        assert hub.mesh.offers["translate"].pairs == ["en-pt", "pt-en"]
        await fridge.wait_for_peers("translate", timeout=5)
        result, served_by = await fridge.translate(request)
        assert served_by == "hub" and result.stats.cached == 0 and result.stats.sentences == 2
        assert hub.agent is not None and fridge.agent is not None
        expected = await hub.agent.translate(request)  # the hub's own engine, no memory
        assert result.translations == expected.translations
        assert fridge.agent.models.loaded_tasks() == []  # the fridge computed nothing

        # The car has never translated: both sentences come from peers' memories, signed and verified.
        await car.wait_for_peers("translate", timeout=5)
        cached, by = await car.translate(request)
        assert by == "translation memory" and cached.stats.cached == 2
        assert cached.translations == expected.translations
        assert car.agent is not None and car.agent.models.loaded_tasks() == []
        assert car.mesh.memory is not None and len(car.mesh.memory) == 2

        # A tampered entry (its signature no longer covers the text) in the hub's memory is never served:
        # entries are re-verified on every hit. The car gets the sentence computed instead.
        other = "Lock the front door at night."
        assert hub.mesh.memory is not None and fridge.mesh.memory is not None
        genuine = make_entry(
            hub.mesh.state.identity.signing_key,
            hub.mesh.certificate.device_id,
            "en-pt",
            other,
            "Tranque a porta da frente à noite.",
            "bergamot-tiny11-en-pt@int8",
        )
        hub.mesh.memory.put(genuine.model_copy(update={"translation": "Abra a porta para todos."}))
        forged, by = await car.translate(TranslateRequest(texts=[other], source="en", target="pt"))
        assert (
            "Abra" not in forged.translations[0] and forged.stats.cached == 0 and by != "translation memory"
        )
        entry = hub.mesh.memory.get("en-pt", other)
        assert entry is None or "Abra" not in entry.translation
        # Entries signed by a member whose certificate does not serve translate (the fridge), or by a
        # device outside the household, are neither handed on nor accepted.
        by_fridge = make_entry(
            fridge.mesh.state.identity.signing_key,
            fridge.mesh.certificate.device_id,
            "en-pt",
            "Good morning.",
            "Compre já!",
            "x",
        )
        outsider = make_entry(
            car.mesh.state.identity.signing_key, "0" * 32, "en-pt", "Good night.", "Boa noite.", "x"
        )
        fridge.mesh.memory.put(by_fridge)
        hub.mesh.memory.put(outsider)
        again, _ = await car.translate(
            TranslateRequest(texts=["Good morning.", "Good night."], source="en", target="pt")
        )
        assert again.stats.cached == 0 and "Compre" not in again.translations[0]
        # Policy off: the phone keeps no memory, answers no queries, and whoever translates for it is
        # asked not to keep its sentences.
        assert phone.mesh.memory is None
        await phone.wait_for_peers("translate", timeout=5)
        kept = [len(svc.mesh.memory or ()) for svc in (hub, fridge, car)]
        private = TranslateRequest(texts=["My bank PIN is written on the fridge."], source="en", target="pt")
        own, by = await phone.translate(private)
        assert by == "hub" and own.translations[0] and own.stats.cached == 0
        assert kept == [len(svc.mesh.memory or ()) for svc in (hub, fridge, car)]

        # An unsupported pair is a clear error naming what the household can do.
        with pytest.raises(InvalidRequestError, match=r"fr→pt .*available: en→pt, pt→en"):
            await fridge.translate(TranslateRequest(texts=["Bonjour"], source="fr", target="pt"))
        for svc in (hub, fridge):
            assert not {k for k in svc.mesh.node.dropped if not k.startswith("Memory")}, svc.mesh.node.dropped
