"""``hearth ha``: hand a command to Home Assistant's Assist (the `ha` extra: homeassistant-api)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edge_agent import aio
from edge_agent.cli.common import ConfigOpt, console, load_config_only, setup_logging
from edge_agent.config import HomeAssistantSection

app = typer.Typer(
    help="Home Assistant: control the home through its Assist (\\[home_assistant] in the agent config; "
    "needs pip install 'hearth-edge\\[ha]').",
    no_args_is_help=True,
)


@app.command("say")
def say(
    words: Annotated[list[str], typer.Argument(help='The command, e.g. "turn on the kitchen light".')],
    conversation_id: Annotated[
        str | None, typer.Option("--conversation-id", help="Continue this conversation (from --json).")
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(
            "--language", "-l", help="Language of the command (default \\[home_assistant] language)."
        ),
    ] = None,
    agent_id: Annotated[
        str | None,
        typer.Option("--agent-id", help="Conversation agent (default \\[home_assistant] agent_id, or HA's)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole reply as JSON (Home Assistant's own under raw).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Say something to Home Assistant's Assist and print its answer, as a voice satellite would.

    Home Assistant's address and a long-lived access token come from \\[home_assistant] in the agent
    config (url, token_file) or HEARTH_HOME_ASSISTANT__URL / HEARTH_HOME_ASSISTANT__TOKEN_FILE. Exits 1
    when Home Assistant cannot be reached, rejects the token, or could not do what was asked.

    Examples:
      hearth ha say "turn on the kitchen light"
      hearth ha say --json "what is the temperature in the living room"
    """
    from edge_agent.ha_bridge import BridgeError, BridgeReply, HomeAssistantBridge, check_command

    text = check_command(" ".join(words))
    cfg = load_config_only(config)
    overrides = {k: v for k, v in (("language", language), ("agent_id", agent_id)) if v is not None}
    settings = cfg.home_assistant
    if overrides:  # validated as the config is (a bad --language is an error naming the field)
        settings = HomeAssistantSection.model_validate({**settings.model_dump(), **overrides})
    setup_logging(cfg.agent.log_level if cfg.agent.log_level != "info" else "warning")

    async def go() -> BridgeReply:
        async with HomeAssistantBridge(settings) as bridge:
            return await bridge.converse(text, conversation_id)

    reply = aio.run(go())
    if as_json:
        print(json.dumps(reply.model_dump(mode="json"), ensure_ascii=False))
    else:
        console.print(reply.speech, markup=False, highlight=False, soft_wrap=True)
    if reply.response_type == "error":
        raise BridgeError(f"Home Assistant could not do it ({reply.error_code or 'error'})")
