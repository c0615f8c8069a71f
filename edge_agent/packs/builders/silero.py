"""Silero VAD v6 (from the ``silero-vad`` package) -> the ``vad`` pack: its ONNX file, unchanged.

The package ships the graph already exported (opset 16, 2.3 MB, fp32), so the build copies it, checks it
is the graph the engine expects (inputs, outputs, opset) and measures it. The package is installed
``--no-deps`` (requirements/weights-nodeps.txt): nothing of it but the file is used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edge_agent.errors import BuildError
from edge_agent.models.pack import PackManifest, Provenance, Requirements, Variant
from edge_agent.packs.builders.common import (
    Progress,
    measure_peak_ram_mb,
    source_weights,
    tool_versions,
    write_manifest,
)

NAME = "silero-vad"
SOURCE_FILE = "data/silero_vad.onnx"
OPSET = 16
INPUTS = ["input", "state", "sr"]
OUTPUTS = ["output", "stateN"]
VARIANTS: dict[str, Variant] = {
    "fp32": Variant(quantization="fp32", precision="fp32", note="the package's ONNX graph, unchanged"),
}


def _check_graph(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if (opset, inputs, outputs) != (OPSET, INPUTS, OUTPUTS):
        raise BuildError(
            f"{NAME}: {path} is not the Silero VAD v6 graph the engine runs (opset {opset}, inputs {inputs}, "
            f"outputs {outputs}; expected opset {OPSET}, {INPUTS}, {OUTPUTS})"
        )


def build(quant: str, work: Path, out_root: Path, progress: Progress) -> tuple[Path, PackManifest]:
    from edge_agent.client.schemas import SAMPLE_RATE
    from edge_agent.engines.vad import CONTEXT_SAMPLES, MODEL_FILE, STATE_SHAPE
    from edge_agent.engines.vad_models import CHUNK_SAMPLES

    if quant not in VARIANTS:
        raise BuildError(f"{NAME}: no variant '{quant}' (choose from {', '.join(VARIANTS)})")
    src = source_weights("silero-vad", "silero_vad", SOURCE_FILE)
    progress(f"checking {SOURCE_FILE} from silero-vad {src.version}")
    _check_graph(src.path)
    out = out_root / f"{NAME}@{quant}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    progress("copying the ONNX graph")
    shutil.copyfile(src.path, out / MODEL_FILE)
    task_info: dict[str, Any] = {
        "model": NAME,
        "sample_rate": SAMPLE_RATE,
        "chunk": CHUNK_SAMPLES,
        "context": CONTEXT_SAMPLES,
        "state_shape": list(STATE_SHAPE),
    }
    progress("measuring peak RAM")
    peak = measure_peak_ram_mb("vad", out, task_info, threads=1)
    manifest = write_manifest(
        out_dir=out,
        name=NAME,
        task="vad",
        variant=VARIANTS[quant],
        requirements=Requirements(runtime="onnxruntime", opset=OPSET),
        provenance=Provenance(
            source_package=src.package,
            source_version=src.version,
            source_file=SOURCE_FILE,
            source_sha256=src.sha256,
            builder="edge_agent.packs.builders.silero",
            tool_versions=tool_versions("onnxruntime", "onnx"),
        ),
        task_info=task_info,
        peak_ram_mb=peak,
    )
    return out, manifest
