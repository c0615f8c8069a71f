"""The tree drawn in `edge_agent/errors.py` is the real one: every public HearthError subclass of the
package appears in it, under each of its real parents, and nothing drawn is missing from the code."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import edge_agent.errors
from edge_agent.errors import HearthError

PACKAGE = Path(edge_agent.errors.__file__).parent
LIGHT = ("mesh/", "errors.py", "ha_bridge.py", "voice/trust.py")
"""Where error classes are defined (importing the rest would load the engines)."""


def _drawn() -> set[tuple[str, str]]:
    """(class, parent) pairs of the docstring's tree."""
    doc = edge_agent.errors.__doc__ or ""
    edges: set[tuple[str, str]] = set()
    stack: list[str] = []
    for line in doc.splitlines():
        if line.strip() == "HearthError":
            stack = ["HearthError"]
            continue
        match = re.match(r"^    ([│ ]*)[├└]── ([A-Z][A-Za-z]+(?:, [A-Z][A-Za-z]+)*)", line)
        if match is None or not stack:
            continue
        depth = len(match.group(1)) // 4 + 1
        names = [n.strip() for n in match.group(2).split(",")]
        del stack[depth:]
        for name in names:
            edges.add((name, stack[depth - 1]))
        stack.append(names[0])
    return edges


def _defined() -> dict[str, type[HearthError]]:
    classes: dict[str, type[HearthError]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith(LIGHT):
            continue
        tree = ast.parse(path.read_text())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
        if not names:
            continue
        module = importlib.import_module("edge_agent." + rel.removesuffix(".py").replace("/", "."))
        for name in names:
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, HearthError) and cls.__module__ == module.__name__:
                classes[name] = cls
    return classes


def test_every_error_class_is_drawn_under_its_real_parents() -> None:
    drawn = _drawn()
    defined = _defined()
    real = {
        (name, base.__name__)
        for name, cls in defined.items()
        for base in cls.__bases__
        if issubclass(base, HearthError) and name != "HearthError"
    }
    assert real - drawn == set(), "classes missing from the drawn tree (or under another parent)"
    assert {name for name, _ in drawn} <= set(defined), "the tree draws classes the code lacks"
    assert drawn - real == set(), "the tree draws a parent the class does not have"


def test_our_own_link_dropping_is_a_network_failure_not_a_peers() -> None:
    from edge_agent.errors import LinkDownError, NetworkError, OffloadError, PeerError, TransportError

    assert issubclass(LinkDownError, TransportError) and issubclass(LinkDownError, NetworkError)
    assert not issubclass(LinkDownError, PeerError | OffloadError)
