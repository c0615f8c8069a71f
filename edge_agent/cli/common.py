"""Helpers shared by CLI commands: consoles, loading config + profile + store."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from edge_agent.config import AgentConfig, load_config
from edge_agent.hearth import mesh_state_dir as mesh_state_dir  # re-exported for the commands
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


@contextlib.asynccontextmanager
async def open_hearth(ctx: Context, *, use_mesh: bool = True) -> AsyncIterator[Any]:
    """This device's agent for one command: the running agent through its local socket if there is
    one (it owns the mesh state: one process, one send counter), else an agent of our own.

    Yields a `Hearth` or a `LocalClient`; both offer generate, embed, translate, peers, wait_for_peers.
    """
    from edge_agent.hearth import SOCKET_NAME, Hearth
    from edge_agent.local_api import LocalClient
    from edge_agent.mesh.files import StateLock
    from edge_agent.mesh.state import HouseholdState

    state_dir = mesh_state_dir(ctx.config)
    if use_mesh and ctx.config.mesh.enabled and HouseholdState.exists(state_dir):
        socket_path = state_dir / SOCKET_NAME
        if StateLock(state_dir).held_elsewhere() and socket_path.exists():
            async with LocalClient(socket_path) as client:
                yield client
            return
    async with Hearth(ctx.config, ctx.profile, ctx.store, ctx.plan, use_mesh=use_mesh) as hearth:
        yield hearth


def load_config_only(config_path: Path | None) -> AgentConfig:
    cfg = load_config(config_path)
    if cfg.agent.home is not None:
        os.environ["HEARTH_HOME"] = str(cfg.agent.home.expanduser())
    return cfg
