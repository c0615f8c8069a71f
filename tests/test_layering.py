"""Import rules: the light modules (the Home Assistant component's side) never pull in onnxruntime."""

from __future__ import annotations

import subprocess
import sys

LIGHT = [
    "edge_agent.config",
    "edge_agent.profiles",
    "edge_agent.models",
    "edge_agent.models.store",
    "edge_agent.models.selection",
    "edge_agent.engines.interfaces",
    "edge_agent.errors",
    "edge_agent.mesh.identity",
    "edge_agent.mesh.household",
    "edge_agent.mesh.envelope",
    "edge_agent.mesh.replay",
    "edge_agent.mesh.pairing",
    "edge_agent.mesh.node",
    "edge_agent.mesh.transports.mqtt",
    "edge_agent.mesh.connect",
    "edge_agent.mesh.broker_pki",
]


def test_light_modules_do_not_import_onnxruntime_or_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in LIGHT)
        + "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'onnxruntime', 'onnxruntime_genai', 'torch', 'transformers'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"light modules imported: {out}"


def test_engines_never_import_mesh_or_sync() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "edge_agent" / "engines"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "edge_agent.mesh" not in text and "edge_agent.sync" not in text, path
