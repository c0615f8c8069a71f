"""Helpers shared by CLI commands: consoles, loading config + profile + store."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import annotated_types
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.logging import RichHandler

from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import InvalidRequestError
from edge_agent.facade import Household
from edge_agent.hearth import mesh_state_dir as mesh_state_dir  # re-exported for the commands
from edge_agent.models.selection import Plan
from edge_agent.models.store import PackStore
from edge_agent.packs.host_gate import HostGate, gated_plan
from edge_agent.profiles import FirmwareProfile, detect_host, list_profiles, load_profile, nearest_profile
from edge_agent.profiles.detect import profile_for_host

if TYPE_CHECKING:
    from edge_agent.engines.manager import ModelManager

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


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def range_text(lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False) -> str:
    """``from 1 to 8192``, ``above 0 and at most 1``, ``at least 1``."""
    if lo is not None and hi is not None and not (lo_open or hi_open):
        return f"from {_num(lo)} to {_num(hi)}"
    low = None if lo is None else f"{'above' if lo_open else 'at least'} {_num(lo)}"
    high = None if hi is None else f"{'below' if hi_open else 'at most'} {_num(hi)}"
    return " and ".join(x for x in (low, high) if x)


def out_of_range(option: str, value: object, range_: str) -> InvalidRequestError:
    shown = _num(value) if isinstance(value, int | float) else value
    return InvalidRequestError(f"{option} {shown}: out of range, must be {range_}")


def field_range(model: type[BaseModel], field: str) -> str:
    """A request model's numeric bounds for one field, as `range_text` words."""
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    for m in model.model_fields[field].metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
    return range_text(lo, hi, lo_open=lo_open, hi_open=hi_open)


def option_error(exc: ValidationError, model: type[BaseModel], options: dict[str, str]) -> Exception:
    """A request built from command-line options was refused: name the option, the value and its range
    (``--max-tokens 0: out of range, must be from 1 to 8192``); other problems stay as they were."""
    for err in exc.errors(include_url=False):
        field = err["loc"][0] if err["loc"] else None
        if field in options and err["type"] in ("greater_than", "greater_than_equal", "less_than",
                                                 "less_than_equal"):  # fmt: skip
            return out_of_range(options[str(field)], err["input"], field_range(model, str(field)))
    return exc


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
    gate = HostGate(store) if cfg.engines.quality_gate else None
    return Context(cfg, prof, store, gated_plan(prof, store.list(), gate)[0])


def own_models(ctx: Context) -> ModelManager:
    """Engines of this command's own, beside a running agent (the VAD of `hearth listen`)."""
    from edge_agent.engines.manager import ModelManager

    engines = ctx.config.engines
    return ModelManager(ctx.store, ctx.profile, ctx.plan, threads=engines.threads,
                        verify_on_load=engines.verify_on_load)  # fmt: skip


@contextlib.asynccontextmanager
async def open_hearth(ctx: Context, *, use_mesh: bool = True) -> AsyncIterator[Household]:
    """This device's household for one command: the running agent through its local socket if there
    is one (it owns the mesh state: one process, one send counter), else an agent of our own. Either
    way the same `Household` calls; commands never ask which.
    """
    from edge_agent.hearth import SOCKET_NAME, Hearth
    from edge_agent.local_api import LocalClient
    from edge_agent.mesh.files import StateLock
    from edge_agent.mesh.state import HouseholdState

    state_dir = mesh_state_dir(ctx.config)
    if use_mesh and ctx.config.mesh.enabled and HouseholdState.exists(state_dir):
        socket_path = state_dir / SOCKET_NAME
        if StateLock(state_dir).held_elsewhere() and socket_path.exists():
            async with LocalClient(socket_path, models=lambda: own_models(ctx)) as client:
                yield client
            return
    async with Hearth(ctx.config, ctx.profile, ctx.store, ctx.plan, use_mesh=use_mesh) as hearth:
        yield hearth


def load_config_only(config_path: Path | None) -> AgentConfig:
    cfg = load_config(config_path)
    if cfg.agent.home is not None:
        os.environ["HEARTH_HOME"] = str(cfg.agent.home.expanduser())
    return cfg
