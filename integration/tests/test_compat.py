"""Version guards: what this Home Assistant has decides what Hearth uses, by probing, and the probes
agree with the version (2025.6 brought `supports_streaming`, 2025.7 AI Task). On the 2025.4.4 these
tests run with, neither exists: the conversation entity streams through the chat log without
declaring it, and no AI Task platform is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

from awesomeversion import AwesomeVersion
from homeassistant.const import Platform
from homeassistant.const import __version__ as HA_VERSION
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er

from custom_components.hearth import compat
from custom_components.hearth.const import DOMAIN

from .conftest import Hub
from .test_lifecycle import _entry_at


def test_the_probes_agree_with_the_version() -> None:
    version = AwesomeVersion(HA_VERSION)
    assert compat.HAS_STREAMING_FLAG is (version >= AwesomeVersion("2025.6.0"))
    assert compat.HAS_AI_TASK is (version >= AwesomeVersion("2025.7.0"))
    assert ("ai_task" in [p.value for p in compat.platforms()]) is compat.HAS_AI_TASK


async def test_on_this_home_assistant_only_what_exists_is_used(
    hass: HomeAssistant, hub: Hub, tmp_path: Path
) -> None:
    entry = await _entry_at(hass, hub, tmp_path / "ha")
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    platforms = {e.domain for e in er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)}
    assert Platform.CONVERSATION in platforms
    assert ("ai_task" in platforms) is compat.HAS_AI_TASK
    conversation = next(
        e
        for e in hass.data["entity_components"]["conversation"].entities
        if e.platform.platform_name == DOMAIN
    )
    assert ("_attr_supports_streaming" in vars(conversation)) is compat.HAS_STREAMING_FLAG
    if HA_VERSION == "2025.4.4":  # the pinned test target: neither feature, and the module never loads
        assert not compat.HAS_AI_TASK and not compat.HAS_STREAMING_FLAG
        assert "custom_components.hearth.ai_task" not in sys.modules
