"""Marian transformer-SSRU (Bergamot ``tiny11``) as two ONNX graphs: an encoder and one decoder step.

Why two graphs: greedy and beam search are loops over decoder steps whose state is tiny (one SSRU cell
per layer), so the engine drives the loop in Python and each step is one ``session.run``. The encoder
also projects its output into every decoder layer's cross-attention keys and values, so steps never
recompute them. Embedding lookups stay outside the graphs: the engine gathers rows from a memory-mapped
table, which is shared by the encoder input, the decoder input and the (shortlisted) output layer.

Graphs are written with ``onnx.helper``: Marian weights map one to one onto MatMul/LayerNormalization,
and no exporter in between means no surprise ops. Attention scaling is folded into the query weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.packs.builders.marian_format import MarianModel

OPSET = 17
LN_EPS = 1e-6


@dataclass(frozen=True)
class Dims:
    emb: int
    heads: int
    enc_layers: int
    dec_layers: int

    @property
    def head_dim(self) -> int:
        return self.emb // self.heads


def dims_of(model: MarianModel) -> Dims:
    cfg = model.config
    return Dims(
        emb=int(cfg.get("dim-emb", 256)),  # type: ignore[arg-type]
        heads=int(cfg.get("transformer-heads", 8)),  # type: ignore[arg-type]
        enc_layers=int(cfg.get("enc-depth", 6)),  # type: ignore[arg-type]
        dec_layers=int(cfg.get("dec-depth", 2)),  # type: ignore[arg-type]
    )


@dataclass
class _Graph:
    """Accumulates nodes and initializers; each helper returns the name of its output."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    _n: int = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: object) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray | None, name: str) -> str:
        y = self.op("MatMul", [x, self.const(f"{name}.W", w.astype(np.float32))], name)
        if b is not None:
            y = self.op("Add", [y, self.const(f"{name}.b", b.reshape(-1).astype(np.float32))], name)
        return y

    def layer_norm(self, x: str, scale: np.ndarray, bias: np.ndarray, name: str) -> str:
        s = self.const(f"{name}.scale", scale.reshape(-1).astype(np.float32))
        b = self.const(f"{name}.bias", bias.reshape(-1).astype(np.float32))
        return self.op("LayerNormalization", [x, s, b], name, axis=-1, epsilon=LN_EPS)

    def shape_const(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))


def _sinusoid_check(dims: Dims) -> None:
    if dims.emb % 2 or dims.emb % dims.heads:
        raise ValueError(f"unsupported dims {dims}")


def encoder_graph(model: MarianModel) -> onnx.ModelProto:
    """``(src_embeds [B,S,E], src_bias [B,1,1,S])`` -> per decoder layer ``enc_k{l} [B,H,D,S]`` and
    ``enc_v{l} [B,H,S,D]``."""
    d = dims_of(model)
    _sinusoid_check(d)
    g = _Graph()
    scale = 1.0 / math.sqrt(d.head_dim)
    split_heads = g.shape_const("split_heads", [0, 0, d.heads, d.head_dim])
    merge_heads = g.shape_const("merge_heads", [0, 0, d.emb])
    x = "src_embeds"
    for layer in range(1, d.enc_layers + 1):
        p = f"encoder_l{layer}_self_"
        q = g.linear(x, model.w(p + "Wq") * scale, model.vec(p + "bq") * scale, f"enc{layer}.q")
        k = g.linear(x, model.w(p + "Wk"), model.vec(p + "bk"), f"enc{layer}.k")
        v = g.linear(x, model.w(p + "Wv"), model.vec(p + "bv"), f"enc{layer}.v")
        qh = g.op("Transpose", [g.op("Reshape", [q, split_heads])], perm=[0, 2, 1, 3])
        kh = g.op("Transpose", [g.op("Reshape", [k, split_heads])], perm=[0, 2, 3, 1])
        vh = g.op("Transpose", [g.op("Reshape", [v, split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [qh, kh]), "src_bias"])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vh])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        o = g.linear(ctx, model.w(p + "Wo"), model.vec(p + "bo"), f"enc{layer}.o")
        x = g.layer_norm(
            g.op("Add", [x, o]), model.w(p + "Wo_ln_scale"), model.w(p + "Wo_ln_bias"), f"enc{layer}.ln1"
        )
        f = f"encoder_l{layer}_ffn_"
        h = g.op("Relu", [g.linear(x, model.w(f + "W1"), model.vec(f + "b1"), f"enc{layer}.ffn1")])
        h = g.linear(h, model.w(f + "W2"), model.vec(f + "b2"), f"enc{layer}.ffn2")
        x = g.layer_norm(
            g.op("Add", [x, h]), model.w(f + "ffn_ln_scale"), model.w(f + "ffn_ln_bias"), f"enc{layer}.ln2"
        )
    outputs = []
    for layer in range(1, d.dec_layers + 1):
        p = f"decoder_l{layer}_context_"
        k = g.linear(x, model.w(p + "Wk"), model.vec(p + "bk"), f"dec{layer}.k")
        v = g.linear(x, model.w(p + "Wv"), model.vec(p + "bv"), f"dec{layer}.v")
        g.nodes.append(
            helper.make_node(
                "Transpose", [g.op("Reshape", [k, split_heads])], [f"enc_k{layer}"], perm=[0, 2, 3, 1]
            )
        )
        g.nodes.append(
            helper.make_node(
                "Transpose", [g.op("Reshape", [v, split_heads])], [f"enc_v{layer}"], perm=[0, 2, 1, 3]
            )
        )
        outputs += [
            helper.make_tensor_value_info(
                f"enc_k{layer}", TensorProto.FLOAT, ["B", d.heads, d.head_dim, "S"]
            ),
            helper.make_tensor_value_info(
                f"enc_v{layer}", TensorProto.FLOAT, ["B", d.heads, "S", d.head_dim]
            ),
        ]
    inputs = [
        helper.make_tensor_value_info("src_embeds", TensorProto.FLOAT, ["B", "S", d.emb]),
        helper.make_tensor_value_info("src_bias", TensorProto.FLOAT, ["B", 1, 1, "S"]),
    ]
    graph = helper.make_graph(g.nodes, "marian_encoder", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hearth")


def decoder_step_graph(model: MarianModel) -> onnx.ModelProto:
    """One target position for a batch of hypotheses.

    Inputs: ``tgt_embed [B,E]`` (previous token embedding x sqrt(E) + position), ``state{l} [B,E]`` (SSRU
    cells), the encoder's ``enc_k{l}``/``enc_v{l}``, ``src_bias``, and the output layer restricted to the
    candidate vocabulary: ``out_w [K,E]``, ``out_b [K]``. Outputs: ``logits [B,K]``, ``next_state{l}``.
    """
    d = dims_of(model)
    g = _Graph()
    scale = 1.0 / math.sqrt(d.head_dim)
    q_heads = g.shape_const("q_heads", [0, d.heads, 1, d.head_dim])
    flat = g.shape_const("flat", [0, d.emb])
    x = "tgt_embed"
    inputs = [helper.make_tensor_value_info("tgt_embed", TensorProto.FLOAT, ["B", d.emb])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "K"])]
    for layer in range(1, d.dec_layers + 1):
        r = f"decoder_l{layer}_rnn_"
        # SSRU: forget gate and candidate share one MatMul (weights concatenated along the output axis).
        wf_w = np.concatenate([model.w(r + "Wf"), model.w(r + "W")], axis=1)
        bias = np.concatenate([model.vec(r + "bf"), np.zeros(d.emb, np.float32)])
        both = g.linear(x, wf_w, bias, f"dec{layer}.ssru")
        gate_in, cand = (f"dec{layer}.gate_in", f"dec{layer}.cand")
        g.nodes.append(
            helper.make_node(
                "Split", [both, g.shape_const(f"dec{layer}.split", [d.emb, d.emb])], [gate_in, cand], axis=1
            )
        )
        f = g.op("Sigmoid", [gate_in])
        prev = f"state{layer}"
        # c = f*c_prev + (1-f)*cand  ==  cand + f*(c_prev - cand)
        c_new = f"next_state{layer}"
        g.nodes.append(helper.make_node("Add", [cand, g.op("Mul", [f, g.op("Sub", [prev, cand])])], [c_new]))
        x = g.layer_norm(
            g.op("Add", [g.op("Relu", [c_new]), x]),
            model.w(r + "ffn_ln_scale"),
            model.w(r + "ffn_ln_bias"),
            f"dec{layer}.ln_rnn",
        )
        p = f"decoder_l{layer}_context_"
        q = g.linear(x, model.w(p + "Wq") * scale, model.vec(p + "bq") * scale, f"dec{layer}.q")
        scores = g.op("Add", [g.op("MatMul", [g.op("Reshape", [q, q_heads]), f"enc_k{layer}"]), "src_bias"])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), f"enc_v{layer}"])
        o = g.linear(g.op("Reshape", [ctx, flat]), model.w(p + "Wo"), model.vec(p + "bo"), f"dec{layer}.o")
        x = g.layer_norm(
            g.op("Add", [x, o]), model.w(p + "Wo_ln_scale"), model.w(p + "Wo_ln_bias"), f"dec{layer}.ln_ctx"
        )
        ff = f"decoder_l{layer}_ffn_"
        h = g.op("Relu", [g.linear(x, model.w(ff + "W1"), model.vec(ff + "b1"), f"dec{layer}.ffn1")])
        h = g.linear(h, model.w(ff + "W2"), model.vec(ff + "b2"), f"dec{layer}.ffn2")
        x = g.layer_norm(
            g.op("Add", [x, h]),
            model.w(ff + "ffn_ln_scale"),
            model.w(ff + "ffn_ln_bias"),
            f"dec{layer}.ln_ffn",
        )
        inputs += [
            helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["B", d.emb]),
            helper.make_tensor_value_info(
                f"enc_k{layer}", TensorProto.FLOAT, ["B", d.heads, d.head_dim, "S"]
            ),
            helper.make_tensor_value_info(
                f"enc_v{layer}", TensorProto.FLOAT, ["B", d.heads, "S", d.head_dim]
            ),
        ]
        outputs.append(helper.make_tensor_value_info(c_new, TensorProto.FLOAT, ["B", d.emb]))
    g.nodes.append(helper.make_node("Gemm", [x, "out_w", "out_b"], ["logits"], transB=1))
    inputs += [
        helper.make_tensor_value_info("src_bias", TensorProto.FLOAT, ["B", 1, 1, "S"]),
        helper.make_tensor_value_info("out_w", TensorProto.FLOAT, ["K", d.emb]),
        helper.make_tensor_value_info("out_b", TensorProto.FLOAT, ["K"]),
    ]
    graph = helper.make_graph(g.nodes, "marian_decoder_step", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hearth")
