"""Hostile input for the fuzz targets: values chosen to break parsers, arithmetic and formatting,
structure-aware mutation of valid JSON documents, and byte-level mutation of whatever the wire carries.

All of it is Hypothesis strategies, so a failing input shrinks and replays exactly. Two rules keep the
generation stable while the system under test changes between examples (Hypothesis refuses a test
whose draws depend on outside state): every choice is made over a fixed range and mapped onto the
document afterwards (a position is a fraction of the length, a field an index modulo the field count),
and values only known at delivery time (a query's nonce, a request's id) are placeholders the target
fills in after drawing (`fill`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "HOSTILE_FLOATS",
    "HOSTILE_INTS",
    "HOSTILE_TEXT",
    "HOSTILE_VALUES",
    "Drawn",
    "dumps",
    "fill",
    "hostile_json",
    "mutate",
    "mutate_bytes",
    "one_in",
    "payload_of",
    "payloads",
    "payloads_of",
    "wire",
]

HOSTILE_INTS: tuple[int, ...] = (
    0,
    1,
    -1,
    2,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32,
    2**53,
    2**53 + 1,
    2**62,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    2**64 + 1,
    10**18,
    10**30,
    10**400,
    -(10**400),
)
HOSTILE_FLOATS: tuple[float, ...] = (
    0.0,
    -0.0,
    5e-324,
    1e-9,
    0.5,
    1.5,
    1e15,
    1e300,
    1.7976931348623157e308,
    -1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
)
HOSTILE_TEXT: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "\n",
    "Evil Name!",
    "../../etc/passwd",
    "/etc/hearth/key",
    "a" * 300,
    "x" * 5000,
    "é",
    "ﬃ",
    "\u202e",
    "\ufeff",
    "\ud800",
    "\U0010ffff",
    "%s%n%x",
    "{0}",
    "{}",
    "[]",
    "null",
    "true",
    "-1",
    "1e999",
    "NaN",
    "0" * 16,
    "f" * 32,
    "0" * 64,
    "g" * 64,
    "en-pt",
    "zz-zz",
    "EN-PT",
    "translate",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "2025-01-01T00:00:00",
    "2025-13-45T99:99:99Z",
    "10000-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
)
HOSTILE_VALUES: tuple[Any, ...] = (
    *HOSTILE_INTS,
    *HOSTILE_FLOATS,
    *HOSTILE_TEXT,
    None,
    True,
    False,
    [],
    {},
    [None],
    [[[[[]]]]],
    {"": None},
    {"type": "presence"},
    [0] * 300,
    ["x"] * 17,
    {"a": {"b": {"c": {"d": 1}}}},
)
"""Replacement values drawn with one choice (cheap; Hypothesis's own generators add the rest)."""
HOSTILE_BYTES: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b'"',
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"1e999",
    b"NaN",
    b"-Infinity",
    b"-0",
    b'"\\ud800"',
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"[" * 700,
    b'{"a":' * 300,
    b"\xef\xbb\xbf",
    b" " * 64,
    b'"' + b"A" * 4096 + b'"',
    b"99999999999999999999999999999999",
)

hostile_json: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.sampled_from(HOSTILE_VALUES), st.integers(), st.floats(), st.text(max_size=40)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=8,
)
"""Any JSON value (NaN and infinities included: a peer's JSON parser may take them), nested a little."""

_OPS = st.sampled_from([0, 0, 1, 1, 1, 2, 2, 3])
"""How many changes (weighted: a third of documents reach the code behind validation unchanged)."""
_SOME_OPS = st.integers(1, 3)
_BYTE = st.integers(0, 255)
_HOSTILE = st.sampled_from(HOSTILE_VALUES)
_HOSTILE_BYTES = st.binary(min_size=1, max_size=16) | st.sampled_from(HOSTILE_BYTES)
_INDEX = st.integers(0, 1023)
_ONE_IN: dict[int, st.SearchStrategy[bool]] = {}


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws, and False when shrunk (so a reproducer keeps only the hostile
    choices that matter). Hypothesis leans towards small integers, so "x == 0" would be far likelier."""
    if n not in _ONE_IN:
        _ONE_IN[n] = st.sampled_from([False] * (n - 1) + [True])
    return _ONE_IN[n]


"""A choice among a runtime number of things (taken modulo their count)."""
_FRACTION = st.integers(0, 1 << 16)
"""A position in a runtime length (scaled to it)."""


def dumps(doc: Any) -> bytes:
    """A document as a peer could send it: JSON, NaN and infinities spelled as Python spells them, lone
    surrogates passed through as the (invalid) UTF-8 a careless encoder writes."""
    return json.dumps(doc, allow_nan=True, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )


def fill(doc: Any, values: dict[Any, Any]) -> Any:
    """``doc`` with every value equal to a key of ``values`` (a placeholder) replaced by its value."""
    if isinstance(doc, dict):
        return {k: fill(v, values) for k, v in doc.items()}
    if isinstance(doc, list):
        return [fill(v, values) for v in doc]
    try:
        return values.get(doc, doc) if not isinstance(doc, bool | float) else doc
    except TypeError:  # unhashable
        return doc


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a JSON document (the root included), depth-first."""
    out = [here]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*here, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*here, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    value = copy.deepcopy(value)  # never share: a drawn constant mutated later would change for good
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    if path:
        del _get(doc, path[:-1])[path[-1]]
    return doc


def _edges(value: Any) -> list[Any]:
    """Values of the same kind as ``value`` at and past its edges (a bigger number, a longer string).
    Kept printable: no integer past 10**400 (Python will not print one past 4300 digits)."""
    if isinstance(value, bool):
        return [not value, 0, 1, "true", None]
    if isinstance(value, int):
        if abs(value) > 10**400:
            return [0, -1, 1, 2**64, "0", 0.0, None]
        return [
            value - 1,
            value + 1,
            -value,
            value * 2**32,
            str(value),
            float(max(min(value, 2**1000), -(2**1000))),
            10**400,
        ]
    if isinstance(value, float):
        whole = int(value) if math.isfinite(value) and abs(value) < 1e18 else 0
        return [-value, value * 1e300, whole, float("nan"), str(value)]
    if isinstance(value, str):
        longer = value * 50 if len(value) < 2000 else value[:100]  # bounded: a frame holds 1 MiB
        return [
            value + value,
            value[:-1],
            value.upper(),
            value + "\x00",
            longer,
            "",
            value + "é",
            " " + value,
        ]
    if isinstance(value, list):
        return [[], value * 2 if len(value) < 1000 else value[:1], [*value, None], value[:1] * 300, [value]]
    if isinstance(value, dict):
        return [{}, [], {**value, "type": "presence"}, {"": value}]
    return [0, "", []]


MUTATIONS = ("edge", "edge", "hostile", "any", "delete", "add-field", "duplicate", "swap-type")
SWAPS: tuple[Callable[[Any], Any], ...] = (str, lambda v: [v], lambda v: {"value": v}, lambda v: None)
FIELD_NAMES = ("type", "id", "extra", "", "__proto__", "nonce", "session")
_MUTATION, _FIELD_NAME = st.sampled_from(MUTATIONS), st.sampled_from(FIELD_NAMES)
_TIMES, _SWAP = st.sampled_from([2, 17, 300]), st.sampled_from(SWAPS)


def mutate(draw: st.DrawFn, doc: Any, max_ops: int = 3) -> Any:
    """``doc`` with up to ``max_ops`` structure-aware changes: a field at or past its edge, replaced by a
    hostile or any value, deleted, an unknown field added, a list element repeated, a type swapped. Called
    inside a composite strategy with its ``draw`` (no strategy object is made per call)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(_OPS if max_ops == 3 else st.integers(0, max_ops))):
        paths = _paths(doc)
        path = paths[draw(_INDEX) % len(paths)]
        op = draw(_MUTATION)
        here = _get(doc, path)
        if op == "edge":
            edges = _edges(here)
            doc = _set(doc, path, edges[draw(_INDEX) % len(edges)])
        elif op == "hostile":
            doc = _set(doc, path, draw(_HOSTILE))
        elif op == "any":
            doc = _set(doc, path, draw(hostile_json))
        elif op == "delete":
            doc = _delete(doc, path)
        elif op == "add-field":
            name, value = draw(_FIELD_NAME), draw(_HOSTILE)
            if isinstance(here, dict):
                here[name] = copy.deepcopy(value)
        elif op == "duplicate":
            times = draw(_TIMES)
            if isinstance(here, list) and here:
                here.extend(copy.deepcopy(here[-1:]) * times)
        else:
            doc = _set(doc, path, draw(_SWAP)(here))
    return doc


BYTE_OPS = ("flip", "set", "insert", "delete", "truncate", "duplicate", "splice-hostile")
_BYTE_OP = st.sampled_from(BYTE_OPS)


@st.composite
def byte_edits(draw: st.DrawFn, max_ops: int = 3) -> list[tuple[str, int, int, bytes]]:
    """Up to ``max_ops`` byte edits, each (operation, position as a fraction of 2**16, a number, bytes),
    applied by `apply_edits` to whatever length the bytes turn out to have."""
    return [
        (draw(_BYTE_OP), draw(_FRACTION), draw(_BYTE), draw(_HOSTILE_BYTES))
        for _ in range(draw(_SOME_OPS if max_ops == 3 else st.integers(1, max_ops)))
    ]


def apply_edits(raw: bytes, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    buf = bytearray(raw)
    for op, fraction, number, chunk in edits:
        at = len(buf) * fraction >> 16
        if op == "flip" and at < len(buf):
            buf[at] ^= 1 << (number % 8)
        elif op == "set" and at < len(buf):
            buf[at] = number
        elif op in ("insert", "splice-hostile"):
            buf[at:at] = chunk
        elif op == "delete":
            del buf[at : at + 1 + number // 4]
        elif op == "truncate":
            del buf[at:]
        elif op == "duplicate":
            buf[at:at] = bytes(buf[at : at + 1 + number]) * (1 + number % 4)
    return bytes(buf)


_EDITS = byte_edits()


def mutate_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with 1 to 3 byte-level changes (bit flips, hostile tokens, cuts, repeats)."""
    return apply_edits(raw, draw(_EDITS))


Drawn = tuple[Any, list[tuple[str, int, int, bytes]]]
"""A drawn payload: (document, byte edits); `wire` makes it bytes."""


def payload_of(draw: st.DrawFn, doc: Any) -> Drawn:
    """`payloads` inside another composite strategy."""
    return mutate(draw, doc), (draw(_EDITS) if draw(one_in(10)) else [])


@st.composite
def payloads(draw: st.DrawFn, doc: Any) -> Drawn:
    """What a hostile member sends in place of ``doc``, as (document, byte edits): mostly ``doc``
    mutated as JSON (valid JSON, reaching the model's validators), sometimes then mutated as bytes too
    (reaching the JSON parser). `wire` turns it into bytes once placeholders are filled."""
    return payload_of(draw, doc)


@st.composite
def payloads_of(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> Drawn:
    """`payloads` of a document drawn from ``docs`` (one strategy, built once)."""
    return payload_of(draw, draw(docs))


def wire(drawn: Drawn, values: dict[Any, Any] | None = None) -> bytes:
    """The bytes of a drawn payload, placeholders filled with ``values``."""
    doc, edits = drawn
    raw = dumps(fill(doc, values) if values else doc)
    return apply_edits(raw, edits) if edits else raw
