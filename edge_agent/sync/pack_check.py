"""A received pack is checked for escapes before onnxruntime sees any of its files.

ONNX tensors may keep their data in "external" files named by a path inside the model
(CVE-2022-25882, CVE-2024-27318: `../` locations read files outside the model's directory), and
onnxruntime-genai's `genai_config.json` names the model files it loads. Every such path must be a
plain relative path to a file the signed manifest lists; the pack directory may hold nothing else
(no symlinks, no extra files). The ONNX protobuf is walked here by field number (no onnx package, no
onnxruntime: the sync layer stays light), along every place a TensorProto can live: initializers,
sparse initializers, node attributes, subgraphs, functions (their nodes and their attributes'
default values) and training info (its initialization and algorithm graphs). Whether onnxruntime
would read a given place itself is not relied on: every place is checked.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from edge_agent.errors import UnsafePackError
from edge_agent.validation import is_plain_relative_path

__all__ = ["check_pack_dir", "external_data_locations"]

_MAX_DEPTH = 64
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as views."""
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise UnsafePackError("malformed ONNX protobuf (bad varint)")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            yield number, wire, varint()
        elif wire == _LEN:
            length = varint()
            if length > n - i:
                raise UnsafePackError("malformed ONNX protobuf (field runs past the end)")
            yield number, wire, buf[i : i + length]
            i += length
        elif wire in (_I64, _I32):
            i += 8 if wire == _I64 else 4
            if i > n:
                raise UnsafePackError("malformed ONNX protobuf (truncated fixed field)")
        else:
            raise UnsafePackError(f"malformed ONNX protobuf (wire type {wire})")


def _messages(buf: memoryview, wanted: dict[int, str]) -> Iterator[tuple[str, memoryview]]:
    for number, wire, value in _fields(buf):
        if wire == _LEN and number in wanted:
            assert isinstance(value, memoryview)
            yield wanted[number], value


# Field numbers from onnx.proto (IR version 10; checked against onnx 1.23's descriptors in the tests).
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}  # TrainingInfoProto: initialization, algorithm
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_FUNCTION = {7: "node", 11: "attribute"}  # FunctionProto: node, attribute_proto (default values)
_SPARSE = {1: "tensor", 2: "tensor"}
_KINDS = {
    "graph": _GRAPH,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "function": _FUNCTION,
    "sparse": _SPARSE,
    "training": _TRAINING,
}


def _locations(kind: str, buf: memoryview, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise UnsafePackError(f"ONNX model nests deeper than {_MAX_DEPTH} levels")
    if kind == "tensor":
        for number, wire, value in _fields(buf):
            if number == 13 and wire == _LEN:  # external_data: StringStringEntryProto {1: key, 2: value}
                assert isinstance(value, memoryview)
                entry = {k: bytes(v) for k, w, v in _fields(value) if w == _LEN and isinstance(v, memoryview)}
                if entry.get(1) == b"location":
                    yield entry.get(2, b"").decode("utf-8", "replace")
        return
    for child, value in _messages(buf, _KINDS[kind]):
        yield from _locations(child, value, depth + 1)


def external_data_locations(model: Path) -> list[str]:
    """Every external-data location an ONNX model file names."""
    with model.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise UnsafePackError(f"{model.name}: empty ONNX file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                found: list[str] = []
                for kind, value in _messages(view, _MODEL):
                    found.extend(_locations(kind, value, 1))
                    value.release()
                return found
            finally:
                view.release()


def _genai_filenames(config: object) -> Iterator[str]:
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "filename" and isinstance(value, str):
                yield value
            else:
                yield from _genai_filenames(value)
    elif isinstance(config, list):
        for value in config:
            yield from _genai_filenames(value)


def check_pack_dir(pack_dir: Path, listed: set[str]) -> None:
    """Refuse a pack directory with anything but the listed regular files, or a model or genai config
    that points anywhere else."""
    present: set[str] = set()
    for path in pack_dir.rglob("*"):
        rel = path.relative_to(pack_dir).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise UnsafePackError(f"{rel}: a symbolic link in the pack")
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise UnsafePackError(f"{rel}: not a regular file")
        if rel not in listed:
            raise UnsafePackError(f"{rel}: in the pack directory but not in the signed manifest")
        present.add(rel)
    if missing := listed - present:
        raise UnsafePackError(f"{sorted(missing)[0]}: listed in the manifest but missing")
    for rel in sorted(present):
        named: list[str] = []
        if rel.endswith(".onnx"):
            named = external_data_locations(pack_dir / rel)
        elif rel.endswith("genai_config.json"):
            try:
                named = list(_genai_filenames(json.loads((pack_dir / rel).read_bytes())))
            except ValueError as exc:
                raise UnsafePackError(f"{rel}: not valid JSON ({exc})") from None
        base = rel.rpartition("/")[0]
        for location in named:
            target = f"{base}/{location}" if base else location
            if not is_plain_relative_path(location) or target not in listed:
                raise UnsafePackError(f"{rel} refers to {location!r}, which is not a file of this pack")
