"""AI Task (HA >= 2025.7, set up only where `compat.HAS_AI_TASK`): "generate data" answered by the
household's models, like the conversation agent. Structured output is parsed from the answer as JSON;
the small models often fail that, and then the task fails with a clear error rather than a guess."""

from __future__ import annotations

import json

from homeassistant.components import ai_task, conversation  # type: ignore[attr-defined,unused-ignore]
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry
from .const import DOMAIN
from .conversation import answer_into
from .runtime import HearthRuntime

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    async_add_entities([HearthAITaskEntity(entry.runtime_data, entry.entry_id, entry.title)])


class HearthAITaskEntity(ai_task.AITaskEntity):  # type: ignore[misc,unused-ignore]
    _attr_has_entity_name = True
    _attr_translation_key = "household_tasks"
    _attr_supported_features = ai_task.AITaskEntityFeature.GENERATE_DATA

    def __init__(self, runtime: HearthRuntime, entry_id: str, title: str) -> None:
        self.runtime = runtime
        self._attr_unique_id = f"{entry_id}-ai-task"
        self._attr_device_info = {"identifiers": {(DOMAIN, entry_id)}, "name": title,
                                  "manufacturer": "Hearth", "model": "household"}  # fmt: skip

    async def _async_generate_data(
        self, task: ai_task.GenDataTask, chat_log: conversation.ChatLog
    ) -> ai_task.GenDataTaskResult:
        _, text = await answer_into(self.runtime, chat_log, self.entity_id)
        if not task.structure:
            return ai_task.GenDataTaskResult(conversation_id=chat_log.conversation_id, data=text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HomeAssistantError(
                translation_domain=DOMAIN, translation_key="not_structured",
                translation_placeholders={"error": str(exc)},
            ) from exc  # fmt: skip
        return ai_task.GenDataTaskResult(conversation_id=chat_log.conversation_id, data=data)
