"""A numpy reader for CTranslate2's ``model.bin`` (binary versions 3 to 6), without importing ctranslate2.

Layout (little-endian): u32 binary version, string spec name, u32 revision, u32 variable count, then per
variable: string name, u8 rank, u32 dims, u8 dtype id (v4+; v3 stored the item size), u32 byte count, the
raw bytes; then u32 alias count and (alias, target) string pairs. A string is u16 length (with its NUL),
the UTF-8 bytes and a NUL. Quantized weights ``x/weight`` come with ``x/weight_scale`` (one float per
output row): w = q / scale. Parsing is strict: a truncated or foreign file raises ``BuildError`` naming
the file and the offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.errors import BuildError

# CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BFLOAT16 = 5


@dataclass(frozen=True)
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # as stored (int8 weights stay int8)
    aliases: dict[str, str]

    def raw(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise BuildError(f"CTranslate2 model ({self.spec}) has no variable '{name}'") from None

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def float(self, name: str) -> np.ndarray:
        """The variable as float32, dequantized if it is stored as int8/int16 with a ``_scale``."""
        value = self.raw(name)
        if value.dtype.kind == "f":
            return value.astype(np.float32)
        scale_name = f"{name}_scale"
        if not self.has(scale_name):
            raise BuildError(f"'{name}' is {value.dtype} but has no '{scale_name}' to dequantize it")
        scale = self.raw(scale_name).astype(np.float32)
        if scale.ndim == 1 and value.ndim == 2:
            scale = scale[:, None]
        out: np.ndarray = value.astype(np.float32) / scale
        return out


def read_model(path: Path) -> CT2Model:
    data = path.read_bytes()
    off = 0

    def fail(what: str) -> BuildError:
        return BuildError(f"{path}: {what} at byte {off}; not a CTranslate2 model.bin")

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal off
        size = struct.calcsize(fmt)
        if off + size > len(data):
            raise fail("unexpected end of file")
        values = struct.unpack_from(fmt, data, off)
        off += size
        return values

    def string() -> str:
        nonlocal off
        (n,) = take("<H")
        if n == 0 or off + n > len(data) or data[off + n - 1] != 0:
            raise fail("bad string")
        text = data[off : off + n - 1].decode("utf-8")
        off += n
        return text

    (version,) = take("<I")
    if not 3 <= version <= 6:
        raise fail(f"unsupported binary version {version}")
    spec = string()
    (revision,) = take("<I")
    (count,) = take("<I")
    if count > 100_000:
        raise fail(f"implausible variable count {count}")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("<B")
        shape = take(f"<{rank}I") if rank else ()
        (type_id,) = take("<B")
        (nbytes,) = take("<I")
        if version == 3:  # item size, float or int by size
            dtype = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}.get(type_id)
        elif type_id == _BFLOAT16:
            dtype = np.dtype("<u2")
        else:
            dtype = _DTYPES.get(type_id)
        if dtype is None:
            raise fail(f"variable '{name}' has unknown dtype id {type_id}")
        n = int(np.prod(shape)) if shape else 1
        if n * dtype.itemsize != nbytes or off + nbytes > len(data):
            raise fail(f"variable '{name}' size {nbytes} does not match shape {shape} x {dtype}")
        value = np.frombuffer(data, dtype=dtype, count=n, offset=off).reshape(shape)
        if type_id == _BFLOAT16 and version > 3:
            value = (value.astype(np.uint32) << 16).view(np.float32)
        variables[name] = value.copy()
        off += nbytes
    aliases: dict[str, str] = {}
    if off < len(data):
        (n_alias,) = take("<I")
        for _ in range(n_alias):
            alias = string()
            aliases[alias] = string()
    if off != len(data):
        raise fail(f"{len(data) - off} trailing bytes")
    return CT2Model(spec, revision, variables, aliases)
