"""Every pack Hearth knows how to build, and the default set ``hearth models build`` produces."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import BuildError
from edge_agent.models.pack import PackManifest

Builder = Callable[[str, Path, Path, Callable[[str], None]], tuple[Path, PackManifest]]
"""``build(quant, work_dir, out_root, progress) -> (pack_dir, manifest)``, one per model family."""


@dataclass(frozen=True)
class BuildSpec:
    name: str
    quant: str
    module: str  # builder module
    default: bool = True
    entry: str = "build"  # its function: entry(quant, work, out_root, progress)

    @property
    def pack_id(self) -> str:
        return f"{self.name}@{self.quant}"

    def builder(self) -> Builder:
        build: Builder = getattr(importlib.import_module(self.module), self.entry)
        return build


CATALOG: tuple[BuildSpec, ...] = (
    BuildSpec("smollm2-135m-instruct", "int4", "edge_agent.packs.builders.smollm2"),
    BuildSpec("smollm2-135m-instruct", "int8", "edge_agent.packs.builders.smollm2"),
    BuildSpec("smollm2-135m-instruct", "fp32", "edge_agent.packs.builders.smollm2"),
    BuildSpec("all-minilm-l6-v2", "fp32", "edge_agent.packs.builders.minilm"),
    BuildSpec("all-minilm-l6-v2", "int8", "edge_agent.packs.builders.minilm"),
    *(
        BuildSpec(f"bergamot-tiny11-{pair}", quant, "edge_agent.packs.builders.bergamot", entry=f"build_{fn}")
        for pair, fn in (("en-pt", "en_pt"), ("pt-en", "pt_en"))
        for quant in ("fp32", "int8")
    ),
    BuildSpec("silero-vad", "fp32", "edge_agent.packs.builders.silero"),
    BuildSpec("whisper-tiny-en", "fp32", "edge_agent.packs.builders.whisper"),
    BuildSpec("whisper-tiny-en", "int8", "edge_agent.packs.builders.whisper"),
)


def default_specs() -> list[BuildSpec]:
    return [s for s in CATALOG if s.default]


def resolve_specs(selectors: list[str]) -> list[BuildSpec]:
    """``smollm2-135m-instruct@int4``, a bare name (all its variants), or a bare quant (``int8``)."""
    if not selectors:
        return default_specs()
    chosen: list[BuildSpec] = []
    for sel in selectors:
        matches = [s for s in CATALOG if sel in (s.pack_id, s.name, s.quant)]
        if not matches:
            known = ", ".join(s.pack_id for s in CATALOG)
            raise BuildError(f"unknown variant '{sel}' (known: {known})")
        chosen += [m for m in matches if m not in chosen]
    return chosen
