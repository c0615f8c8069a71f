"""Readers for Marian's binary files as shipped by Bergamot: the model container and the lexical shortlist.

Marian writes a model as one container of named tensors. Bergamot's ``intgemm8bitalpha`` models keep every
matrix as int8 with one float ``quantMult`` per tensor (w = q / quantMult), stored ``out`` rows of ``in``
values although the header says ``[in, out]``; only the embedding table ``Wemb`` is row-major by token.
Parsing is strict: a truncated or foreign file raises ``BuildError`` naming the file and the offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edge_agent.errors import BuildError

_INT8 = 0x4101
_FLOAT32 = 0x0404
_TEXT = 0x0101
SHORTLIST_MAGIC = 0xF11A48D5013417F5


@dataclass(frozen=True)
class MarianModel:
    """Float weights (dequantized, ``[in, out]`` so that y = x @ W) plus the embedded model config."""

    weights: dict[str, np.ndarray]
    quant_mult: dict[str, float]
    int8: dict[str, np.ndarray]  # the stored int8 values, ``[in, out]`` like ``weights``
    config: dict[str, object]

    def w(self, name: str) -> np.ndarray:
        try:
            return self.weights[name]
        except KeyError:
            raise BuildError(f"Marian model has no tensor '{name}'") from None

    def vec(self, name: str) -> np.ndarray:
        return self.w(name).reshape(-1)


def read_model(path: Path) -> MarianModel:
    data = path.read_bytes()

    def fail(what: str, at: int) -> BuildError:
        return BuildError(f"{path}: {what} at byte {at}; not a Marian binary model")

    if len(data) < 16:
        raise fail("file too short", 0)
    version, count = struct.unpack_from("<QQ", data, 0)
    if version != 1 or not 0 < count < 100_000:
        raise fail(f"unexpected header (version {version}, {count} items)", 0)
    off = 16
    heads = [struct.unpack_from("<QQQQ", data, off + 32 * i) for i in range(count)]
    off += 32 * count
    names = []
    for name_len, *_ in heads:
        names.append(data[off : off + name_len].rstrip(b"\0").decode("utf-8"))
        off += name_len
    shapes = []
    for _, _, shape_len, _ in heads:
        shapes.append(struct.unpack_from(f"<{shape_len}i", data, off))
        off += 4 * shape_len
    (pad,) = struct.unpack_from("<Q", data, off)
    off += 8 + pad
    weights: dict[str, np.ndarray] = {}
    quant: dict[str, float] = {}
    raw_int8: dict[str, np.ndarray] = {}
    config: dict[str, object] = {}
    for name, (_, kind, _, size), shape in zip(names, heads, shapes, strict=True):
        if off + size > len(data):
            raise fail(f"tensor '{name}' runs past the end", off)
        blob = data[off : off + size]
        n = int(np.prod(shape))
        if kind == _INT8:
            q = np.frombuffer(blob, dtype=np.int8, count=n)
            (mult,) = struct.unpack_from("<f", blob, n)
            if name.endswith("_QuantMultA"):
                pass  # activation multipliers: a float forward pass does not use them
            elif name == "Wemb":
                raw_int8[name] = q.reshape(shape)
                weights[name] = q.reshape(shape).astype(np.float32) / np.float32(mult)
                quant[name] = mult
            else:
                rows, cols = shape[0], shape[1]  # header [in, out]; bytes are out rows of in values
                mat = q.reshape(cols, rows).T
                raw_int8[name] = np.ascontiguousarray(mat)
                weights[name] = np.ascontiguousarray(mat.astype(np.float32) / np.float32(mult))
                quant[name] = mult
        elif kind == _FLOAT32:
            weights[name] = np.frombuffer(blob, dtype="<f4", count=n).reshape(shape).copy()
        elif kind == _TEXT:
            if name == "special:model.yml":
                config = yaml.safe_load(blob[:n].rstrip(b"\0").decode("utf-8")) or {}
        else:
            raise fail(f"tensor '{name}' has unknown type 0x{kind:04x}", off)
        off += size
    return MarianModel(weights, quant, raw_int8, config)


@dataclass(frozen=True)
class Shortlist:
    """Per source token, the target ids worth scoring (Marian's ``lex.s2t`` binary shortlist)."""

    first_num: int  # ids 0..first_num-1 are always candidates (punctuation, frequent words)
    best_num: int
    offsets: np.ndarray  # uint64 [vocab + 1]
    ids: np.ndarray  # uint32 [total]


def read_shortlist(path: Path) -> Shortlist:
    data = path.read_bytes()
    if len(data) < 48:
        raise BuildError(f"{path}: too short for a Marian shortlist")
    magic, _checksum, first, best, offsets_n, lists_n = struct.unpack_from("<6Q", data, 0)
    if magic != SHORTLIST_MAGIC:
        raise BuildError(f"{path}: bad magic 0x{magic:016x}; not a Marian binary shortlist")
    expected = 48 + 8 * offsets_n + 4 * lists_n
    if len(data) != expected:
        raise BuildError(f"{path}: {len(data)} bytes, header promises {expected}")
    offsets = np.frombuffer(data, dtype="<u8", count=offsets_n, offset=48).copy()
    ids = np.frombuffer(data, dtype="<u4", count=lists_n, offset=48 + 8 * offsets_n).copy()
    if offsets[-1] != lists_n or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise BuildError(f"{path}: shortlist offsets are not monotonic up to {lists_n}")
    return Shortlist(int(first), int(best), offsets, ids)
