"""The conversation agent answers through the household: a real hub agent (`hearth run`, real SmolLM2
pack, self-benchmarked offers) on a real Mosquitto. Home Assistant's answer is the hub's own answer to
the same request, token for token, and says which device served it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_agent.mesh.state import HouseholdState
from homeassistant.components import conversation
from homeassistant.components.conversation.chat_log import ChatLog, async_get_chat_log
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.chat_session import async_get_chat_session

from custom_components.hearth.const import DOMAIN

from .conftest import REPO, Hub, _stop, add_member, chat_on, run_agent
from .test_config_flow import _paired_entry
from .test_devices import until

PROMPT = "What is the capital of France? Answer in one sentence."


async def test_the_household_chat_answers_through_the_hub(hass: HomeAssistant, hub: Hub) -> None:
    entry = await _paired_entry(hass, hub)
    runtime = entry.runtime_data
    with hub.run():
        hub_id = next(c.device_id for c in runtime.devices() if c.name == "hub")

        def offers_chat() -> bool:
            peer = runtime.peer(hub_id)
            return peer is not None and peer.offer("generate") is not None

        await until(hass, entry, offers_chat, timeout=180)  # the hub benchmarks itself first
        entity_id = er.async_get(hass).async_get_entity_id(
            "conversation", DOMAIN, f"{entry.entry_id}-conversation"
        )
        assert entity_id is not None
        result = await conversation.async_converse(hass, PROMPT, None, Context(), agent_id=entity_id)
        speech = result.response.speech["plain"]
        assert speech["extra_data"] == {"served_by": "hub", "failovers": 0}
        assert speech["speech"].strip() == hub.chat(PROMPT, max_tokens=256).strip()
        # A follow-up in the same conversation carries the earlier turns (the chat log's history).
        again = await conversation.async_converse(
            hass, "And of Portugal?", result.conversation_id, Context(), agent_id=entity_id
        )
        assert again.conversation_id == result.conversation_id
        assert again.response.speech["plain"]["extra_data"]["served_by"] == "hub"
        assert again.response.speech["plain"]["speech"].strip()


async def test_the_translate_action_answers_with_the_hubs_translation(hass: HomeAssistant, hub: Hub) -> None:
    import pytest
    from homeassistant.exceptions import ServiceValidationError
    from homeassistant.setup import async_setup_component

    assert await async_setup_component(hass, DOMAIN, {})  # the integration, before any household
    with pytest.raises(ServiceValidationError) as refused:
        await hass.services.async_call(DOMAIN, "translate", {"text": "Hi.", "source": "en", "target": "pt"},
                                       blocking=True, return_response=True)  # fmt: skip
    assert refused.value.translation_key == "no_household"
    entry = await _paired_entry(hass, hub)
    runtime = entry.runtime_data
    with hub.run():
        hub_id = next(c.device_id for c in runtime.devices() if c.name == "hub")

        def offers_translate() -> bool:
            peer = runtime.peer(hub_id)
            return peer is not None and peer.offer("translate") is not None

        await until(hass, entry, offers_translate, timeout=180)
        text = "The dishwasher finished at 14:32."
        ask = {"text": text, "source": "en", "target": "pt"}
        response = await hass.services.async_call(
            DOMAIN, "translate", ask, blocking=True, return_response=True
        )
        assert response is not None and response["served_by"] == "hub"
        assert response["model"].startswith("bergamot-tiny11-en-pt")
        assert response["translation"] == hub.translate(text, "en", "pt")


async def test_a_correction_made_in_home_assistant_is_what_the_hub_answers(
    hass: HomeAssistant, hub: Hub
) -> None:
    entry = await _paired_entry(hass, hub, "--may-correct")  # the hub approves Home Assistant to correct
    runtime = entry.runtime_data
    with hub.run():
        hub_id = next(c.device_id for c in runtime.devices() if c.name == "hub")
        await until(hass, entry, lambda: runtime.peer(hub_id) is not None, timeout=180)
        text, fixed = "Turn on the oven.", "Liga já o forno."
        call = hass.services.async_call
        fix = {"text": text, "source": "en", "target": "pt", "correction": fixed}
        record = await call(DOMAIN, "correct_translation", fix, blocking=True, return_response=True)
        assert record is not None and record["target"] == fixed and record["pair"] == "en-pt"
        # Pushed to the hub at once; once its presence announces the same corrections as ours, its own
        # translation of that sentence is the correction.
        mine = runtime.corrections.corrections.digest

        def hub_holds_it() -> bool:
            peer = runtime.peer(hub_id)
            return peer is not None and peer.presence.corrections == mine

        await until(hass, entry, hub_holds_it, timeout=30)
        assert hub.translate(text, "en", "pt") == fixed
        ask = {"text": f"{text} Good night.", "source": "en", "target": "pt"}
        response = await call(DOMAIN, "translate", ask, blocking=True, return_response=True)
        assert response is not None and response["translation"].startswith(fixed)


LONG_PROMPT = "Count from one to forty in words, separated by commas."


async def test_the_answer_survives_the_serving_device_dying_mid_answer(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    """Two devices run the same chat pack. The one answering is killed (SIGKILL) as the first words
    reach Home Assistant's chat log; the mesh fails over and the other finishes the answer, which is
    then exactly what the survivor alone answers (greedy decoding, resumed token for token)."""
    entry = await _paired_entry(hass, hub)
    runtime = entry.runtime_data
    home = tmp_path / "hub2"
    await hass.async_add_executor_job(
        lambda: add_member(hub, home, "hub-2", serves=["generate"], device_class="hub", profile="hub")
    )
    config = home / "hub2.toml"
    config.write_text(
        f'[agent]\nname = "hub-2"\nprofile = "hub"\n[mesh]\nenabled = true\nbroker = "{hub.broker}"\n'
        f'state_dir = "{home}"\npresence_interval_s = 1.0\n[updates]\nenabled = false\n'
    )
    packs = Path(os.environ.get("HEARTH_HOME", str(REPO / ".hearth")))
    second_id = await hass.async_add_executor_job(lambda: HouseholdState(home).load().certificate.device_id)
    with hub.run() as first:
        second = run_agent(home, config, packs, tmp_path / "hub2.log")
        try:
            hub_id = await hass.async_add_executor_job(
                lambda: HouseholdState(hub.home / "state").load().certificate.device_id
            )
            processes = {hub_id: first, second_id: second}

            def both_offer_chat() -> bool:
                return all((p := runtime.peer(d)) is not None and p.offer("generate") for d in processes)

            await until(hass, entry, both_offer_chat, timeout=180)
            entity_id = er.async_get(hass).async_get_entity_id(
                "conversation", DOMAIN, f"{entry.entry_id}-conversation"
            )
            killed: list[str] = []

            def on_delta(chat_log: ChatLog, delta: dict[str, Any]) -> None:
                if delta.get("content") and not killed:
                    [victim] = runtime.member.endpoint.streaming_from()
                    processes[victim].kill()  # no goodbye: the broker's last will says it left
                    killed.append(victim)

            with (
                async_get_chat_session(hass, None) as session,
                async_get_chat_log(hass, session, None, chat_log_delta_listener=on_delta),
            ):
                result = await conversation.async_converse(
                    hass, LONG_PROMPT, session.conversation_id, Context(), agent_id=entity_id
                )
            [victim] = killed
            survivor = next(d for d in processes if d != victim)
            speech = result.response.speech["plain"]
            names = {hub_id: "hub", second_id: "hub-2"}
            assert speech["extra_data"] == {"served_by": names[survivor], "failovers": 1}
            survivor_config = hub.config if survivor == hub_id else config
            own = await hass.async_add_executor_job(
                lambda: chat_on(survivor_config, packs, LONG_PROMPT, max_tokens=256)
            )
            assert speech["speech"].strip() == own.strip()
        finally:
            _stop(second)
