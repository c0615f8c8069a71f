"""A conversation agent that answers through the household's models: the request is routed to the
peer expected to finish first (its offer, load and measured speed), streamed back into the chat log
as it is generated, and failed over to another peer mid-answer if that one drops out (the mesh's).
The response says which device served it (``speech`` extra data ``served_by``).

Streaming: the chat log's delta stream exists from HA 2025.3; the entity declares
``supports_streaming`` only where that attribute exists (HA 2025.6, guarded below)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Literal

from edge_agent.client import ChatMessage, GenerateRequest, RoutedStream
from edge_agent.errors import HearthError
from homeassistant.components import conversation
from homeassistant.const import MATCH_ALL
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import intent
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from . import HearthConfigEntry, compat
from .const import DOMAIN
from .runtime import HearthRuntime

_LOGGER = logging.getLogger(__name__)

MAX_TOKENS = 256
MAX_HISTORY = 8
"""Earlier turns sent with each question (the small models' context is short)."""


async def async_setup_entry(
    hass: HomeAssistant, entry: HearthConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    async_add_entities([HearthConversationEntity(entry.runtime_data, entry.entry_id, entry.title)])


def _messages(chat_log: conversation.ChatLog) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for content in chat_log.content:
        if isinstance(content, conversation.SystemContent) and content.content.strip():
            out.append(ChatMessage(role="system", content=content.content))
        elif isinstance(content, conversation.UserContent):
            out.append(ChatMessage(role="user", content=content.content))
        elif isinstance(content, conversation.AssistantContent) and content.content:
            out.append(ChatMessage(role="assistant", content=content.content))
    system = [m for m in out if m.role == "system"][:1]
    turns = [m for m in out if m.role != "system"][-(2 * MAX_HISTORY + 1) :]
    return system + turns


async def answer_into(
    runtime: HearthRuntime, chat_log: conversation.ChatLog, agent_id: str | None
) -> tuple[RoutedStream, str]:
    """Route the chat log's conversation to the household and stream the answer into the log (also
    used by the AI Task entity); returns the routed stream (who served it) and the answer's text."""
    try:
        request = GenerateRequest(messages=_messages(chat_log), max_tokens=MAX_TOKENS)
    except ValueError as exc:
        raise HomeAssistantError(
            translation_domain=DOMAIN, translation_key="bad_conversation",
            translation_placeholders={"error": str(exc)},
        ) from exc  # fmt: skip
    routed = runtime.router.generate(request)

    async def deltas() -> AsyncGenerator[conversation.AssistantContentDeltaDict]:
        yield {"role": "assistant"}
        async for chunk in routed:
            if chunk.text:
                yield {"content": chunk.text}

    try:
        async for _ in chat_log.async_add_delta_content_stream(agent_id or DOMAIN, deltas()):
            pass
    except HearthError as exc:
        _LOGGER.warning("the household could not answer: %s", exc)
        raise HomeAssistantError(
            translation_domain=DOMAIN, translation_key="household_failed",
            translation_placeholders={"error": str(exc)},
        ) from exc  # fmt: skip
    answer = chat_log.content[-1]
    text = answer.content if isinstance(answer, conversation.AssistantContent) else None
    return routed, text or ""


class HearthConversationEntity(conversation.ConversationEntity, conversation.AbstractConversationAgent):
    """The household's chat, as Home Assistant's conversation agent."""

    _attr_has_entity_name = True
    _attr_name = None
    _attr_translation_key = "household_chat"

    def __init__(self, runtime: HearthRuntime, entry_id: str, title: str) -> None:
        self.runtime = runtime
        self._attr_unique_id = f"{entry_id}-conversation"
        self._attr_device_info = {"identifiers": {(DOMAIN, entry_id)}, "name": title,
                                  "manufacturer": "Hearth", "model": "household"}  # fmt: skip
        if compat.HAS_STREAMING_FLAG:  # HA >= 2025.6
            self._attr_supports_streaming = True

    @property
    def supported_languages(self) -> list[str] | Literal["*"]:
        return MATCH_ALL

    async def _async_handle_message(
        self, user_input: conversation.ConversationInput, chat_log: conversation.ChatLog
    ) -> conversation.ConversationResult:
        routed, text = await answer_into(self.runtime, chat_log, user_input.agent_id)
        response = intent.IntentResponse(language=user_input.language)
        response.async_set_speech(text or "", extra_data={"served_by": routed.served_by,
                                                          "failovers": routed.failovers})  # fmt: skip
        return conversation.ConversationResult(
            response=response, conversation_id=chat_log.conversation_id,
            continue_conversation=chat_log.continue_conversation,
        )  # fmt: skip
