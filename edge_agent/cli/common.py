"""Helpers shared by CLI commands: consoles, loading config + profile + store."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from edge_agent.config import AgentConfig, load_config
from edge_agent.models.selection import Plan, plan_for_profile
from edge_agent.models.store import PackStore
from edge_agent.profiles import FirmwareProfile, detect_host, list_profiles, load_profile, nearest_profile
from edge_agent.profiles.detect import profile_for_host

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Agent config TOML (see config/).")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Profile id, YAML path or 'auto'.")]

console = Console(highlight=False)
console_err = Console(stderr=True, highlight=False)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console_err, show_path=False, rich_tracebacks=False)],
    )


def resolve_profile(spec: str) -> FirmwareProfile:
    if spec == "auto":
        host = detect_host()
        return profile_for_host(host, nearest_profile(host, list_profiles()))
    return load_profile(spec)


@dataclass
class Context:
    config: AgentConfig
    profile: FirmwareProfile
    store: PackStore
    plan: Plan


def load_context(config_path: Path | None, profile: str | None) -> Context:
    cfg = load_config(config_path)
    if cfg.agent.home is not None:
        os.environ["HEARTH_HOME"] = str(cfg.agent.home.expanduser())
    prof = resolve_profile(profile or cfg.agent.profile)
    store = PackStore()
    return Context(cfg, prof, store, plan_for_profile(prof, [p.manifest for p in store.list()]))


def mesh_state_dir(config: AgentConfig) -> Path:
    """Where this device's mesh keys and household state live (``[mesh] state_dir`` or <home>/mesh)."""
    from edge_agent.mesh.state import state_dir_for
    from edge_agent.paths import hearth_home

    return state_dir_for(config.mesh.state_dir, hearth_home())


def load_config_only(config_path: Path | None) -> AgentConfig:
    cfg = load_config(config_path)
    if cfg.agent.home is not None:
        os.environ["HEARTH_HOME"] = str(cfg.agent.home.expanduser())
    return cfg


def mesh_client(ctx: Context, agent: Any) -> Any:
    """This device as a one-shot, non-serving client of its household (``hearth chat``, ``hearth peers``).

    Its own client id suffix, so it never displaces this device's running agent on the broker.
    """
    from edge_agent.service import MeshService

    return MeshService(
        ctx.config,
        ctx.profile,
        ctx.plan,
        mesh_state_dir(ctx.config),
        agent=agent,
        serve=False,
        client_id_suffix=f"-cli{os.getpid()}",
    )
