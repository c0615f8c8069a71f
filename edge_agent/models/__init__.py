"""Model packs: manifest schema, content-addressed store, per-profile selection, quality scores (no engines:
building and gating packs is `edge_agent.packs`)."""

from edge_agent.models.pack import PackFile, PackManifest, Provenance, Requirements, Variant
from edge_agent.models.selection import Plan, TaskPlan, plan_for_profile
from edge_agent.models.store import InstalledPack, PackStore

__all__ = [
    "InstalledPack",
    "PackFile",
    "PackManifest",
    "PackStore",
    "Plan",
    "Provenance",
    "Requirements",
    "TaskPlan",
    "Variant",
    "plan_for_profile",
]
