"""Import rules: the mesh library (what the Home Assistant component installs) pulls in no engine.

The check runs in a fresh interpreter where importing any heavy package fails outright, so a lazy or
guarded import that would still load it is caught too. The packages blocked are exactly those a
client-only install (`requirements/mesh.txt`) does not have.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "edge_agent"
HEAVY = {
    "onnxruntime",
    "onnxruntime_genai",
    "torch",
    "transformers",
    "sentencepiece",
    "tokenizers",
    "amqtt",
    "numpy",
    "jinja2",
}

MESH_LIBRARY = [
    "edge_agent",
    "edge_agent.errors",
    "edge_agent.tasks",
    "edge_agent.mesh",
    "edge_agent.mesh.identity",
    "edge_agent.mesh.household",
    "edge_agent.mesh.envelope",
    "edge_agent.mesh.replay",
    "edge_agent.mesh.pairing",
    "edge_agent.mesh.pairing_link",
    "edge_agent.mesh.node",
    "edge_agent.mesh.protocol",
    "edge_agent.mesh.rpc",
    "edge_agent.mesh.endpoint",
    "edge_agent.mesh.peers",
    "edge_agent.mesh.memory",
    "edge_agent.mesh.features.group_keys",
    "edge_agent.mesh.features.translation_memory",
    "edge_agent.mesh.transports.mqtt",
    "edge_agent.mesh.transports.memory",
    "edge_agent.mesh.broker",
    "edge_agent.mesh.broker_pki",
    "edge_agent.mesh.state",
    "edge_agent.router",
    "edge_agent.task_specs",
    "edge_agent.hearth",
    "edge_agent.local_api",
    "edge_agent.config",
    "edge_agent.connect",
    "edge_agent.profiles",
    "edge_agent.models.store",
    "edge_agent.models.selection",
    "edge_agent.models.quality",
    "edge_agent.models.host_gate",
    "edge_agent.engines.interfaces",
    "edge_agent.sync",
    "edge_agent.sync.digests",
    "edge_agent.sync.signing",
    "edge_agent.sync.keys",
    "edge_agent.sync.manifest",
    "edge_agent.sync.describe",
    "edge_agent.sync.trust",
    "edge_agent.sync.store",
    "edge_agent.sync.publish",
    "edge_agent.sync.pack_check",
    "edge_agent.sync.swarm",
]

_BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(HEAVY)!r}:
            raise ImportError('blocked heavy import: ' + name)
sys.meta_path.insert(0, _Block())
"""


def test_mesh_library_and_router_import_without_engines() -> None:
    code = _BLOCKER + "".join(f"import {m}\n" for m in MESH_LIBRARY)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_engines_never_import_mesh_or_sync() -> None:
    for path in (ROOT / "engines").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("edge_agent.mesh", "edge_agent.sync"))}
        assert not bad, f"{path}: {bad}"


def test_mesh_and_sync_never_import_config_engines_or_the_agent() -> None:
    forbidden = (
        "edge_agent.config",
        "edge_agent.engines",
        "edge_agent.agent",
        "edge_agent.service",
        "edge_agent.router",
        "edge_agent.task_specs",
        "edge_agent.hearth",
        "edge_agent.local_api",
        "edge_agent.cli",
        "edge_agent.connect",
        "edge_agent.profiles",
    )
    for path in [*(ROOT / "mesh").rglob("*.py"), *(ROOT / "sync").rglob("*.py")]:
        bad = {m for m in _imports(path) if m.startswith(forbidden)}
        assert not bad, f"{path} imports {bad}: the mesh takes settings as values, never reads config"
