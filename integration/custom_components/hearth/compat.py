"""What this Home Assistant has, checked once: newer features are used only where they exist.

Targets HA 2025.4.4 (the oldest supported, `hacs.json`). Chat-log delta streaming is there (2025.3);
`ConversationEntity.supports_streaming` comes with 2025.6 and AI Task with 2025.7, so both are probed
(an attribute and a module), never assumed from a version string. Tests assert what this HA has."""

from __future__ import annotations

import importlib.util

from homeassistant.components.conversation import ConversationEntity
from homeassistant.const import Platform

HAS_STREAMING_FLAG = hasattr(ConversationEntity, "_attr_supports_streaming")
"""HA >= 2025.6: a conversation entity declares that it streams (core#179883)."""

HAS_AI_TASK = importlib.util.find_spec("homeassistant.components.ai_task") is not None and any(
    p.value == "ai_task" for p in Platform
)
"""HA >= 2025.7: the `ai_task` platform (generate data)."""


def platforms() -> list[Platform]:
    """This integration's platforms on this Home Assistant."""
    found = [Platform.BINARY_SENSOR, Platform.CONVERSATION, Platform.SENSOR, Platform.UPDATE]
    if HAS_AI_TASK:
        found.append(Platform("ai_task"))
    return found
