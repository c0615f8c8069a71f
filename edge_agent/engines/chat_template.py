"""Rendering a pack's chat template (Jinja, as in Hugging Face tokenizer configs) in a sandbox."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_agent.errors import PackError


@lru_cache(maxsize=8)
def compile_chat(template: str) -> Any:
    """The compiled template (a jinja2 Template: ``.render(messages=..., add_generation_prompt=...)``);
    PackError if it does not compile."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise PackError(f"the pack's chat template does not compile: {exc}") from exc


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text the model was trained on for these messages."""
    return str(compile_chat(template).render(messages=messages, add_generation_prompt=add_generation_prompt))
