"""Import rules, read from the declared map in ``tests/layers.py`` (issue 22, point 9).

Every ``.py`` file of the repository's code trees is parsed (no hand-kept list); every ``import`` counts,
lazy ones inside functions and ``TYPE_CHECKING`` ones included. A break the code still has is listed in
the map as known (with its issue): the test fails when a new one appears and when a listed one is gone,
so the list only shrinks. The mesh library (``layers.LIGHT``, expanded over the package tree) must load
in a fresh interpreter where importing any heavy package fails outright, so a lazy or guarded import that
would still load it is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

from tests import layers

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("edge_agent", "benchmarks", "tests", "integration/custom_components", "integration/e2e")
README_BEGIN = "<!-- layers:begin (generated from tests/layers.py by render(); checked) -->"
README_END = "<!-- layers:end -->"


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str  # the module the statement names (``pkg.name`` when that is a module)
    via: str | None  # the module defining a lazily exported name, if the statement took one
    where: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


@cache
def lazy_exports(package: str) -> dict[str, str]:
    """A package ``__init__``'s ``_EXPORTS`` (name → defining module), read without importing it:
    string literals, or module-level names bound to one."""
    path = modules().get(package)
    if path is None or path.name != "__init__.py":
        return {}
    strings: dict[str, str] = {}

    def text(node: ast.expr | None) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in strings:
            return strings[node.id]
        raise AssertionError(f"{path}:{getattr(node, 'lineno', 0)}: _EXPORTS must map strings to strings")

    for node in ast.parse(path.read_text()).body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if not isinstance(target, ast.Name):
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            strings[target.id] = value.value
        elif target.id == "_EXPORTS" and isinstance(value, ast.Dict):
            return {text(k): text(v) for k, v in zip(value.keys, value.values, strict=True)}
    return {}


def _edges_of(mod: str, path: Path, source: str | None = None) -> Iterator[Edge]:
    is_pkg = path.name == "__init__.py"
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(mod, alias.name, None, where)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = mod.split(".")
                anchor = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules():
                    yield Edge(mod, sub, None, where)
                else:
                    yield Edge(mod, base, lazy_exports(base).get(alias.name), where)


@cache
def edges() -> tuple[Edge, ...]:
    return tuple(e for mod, path in modules().items() for e in _edges_of(mod, path) if e.imported != mod)


def matches(module: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(module, p) for p in patterns)


def breaks(rule: layers.Never) -> dict[tuple[str, str], str]:
    """``(importer, imported) → first place`` for every import that breaks ``rule``."""
    found: dict[tuple[str, str], str] = {}
    for e in edges():
        if not matches(e.importer, rule.importers) or matches(e.importer, rule.importers_except):
            continue
        if matches(e.imported, rule.imported_except):
            continue  # through an allowed surface
        for target in (e.imported, e.via):
            if target is not None and matches(target, rule.imported):
                found.setdefault((e.importer, target), e.where)
    return found


def circles() -> set[tuple[str, ...]]:
    """Strongly connected components of the package's module graph (Tarjan), as structure.py counts
    them: a package importing only its own submodules (lazy exports) is not a circle."""
    graph: dict[str, set[str]] = {m: set() for m in modules() if m.startswith("edge_agent")}
    for e in edges():
        if e.importer in graph and e.imported in graph:
            graph[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 and not all(m.startswith(min(comp, key=len)) for m in comp):
                found.add(tuple(sorted(comp)))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


# --- the map itself -------------------------------------------------------------------------------------


def _claims(module: str) -> dict[int, int]:
    """Layer index → how specific its best pattern matching ``module`` is (its length before any ``*``)."""
    found: dict[int, int] = {}
    for i, layer in enumerate(layers.LAYERS):
        lengths = [len(p.split("*")[0]) for p in layer.modules if fnmatchcase(module, p)]
        if lengths:
            found[i] = max(lengths)
    return found


def _rank(module: str) -> int | None:
    """The index of ``module``'s layer (0 = top): the one whose pattern matches it most specifically."""
    claims = _claims(module)
    return max(claims, key=lambda i: claims[i]) if claims else None


def test_every_module_sits_in_exactly_one_layer() -> None:
    homeless = [m for m in modules() if m.startswith("edge_agent") and not _claims(m)]
    assert not homeless, f"add these to a layer in tests/layers.py: {homeless}"
    for module in modules():
        best = sorted(_claims(module).values(), reverse=True)
        assert len(best) < 2 or best[0] > best[1], f"{module}: two layers claim it as specifically"


def test_known_breaks_name_real_rules_and_modules() -> None:
    keys = {r.key for r in layers.NEVERS} | {layers.DOWNWARD}
    for known in layers.KNOWN:
        assert known.rule in keys, known
        assert known.importer in modules(), f"{known}: no such module (moved? update the map)"
    assert len(set(layers.KNOWN)) == len(layers.KNOWN), "a known break listed twice"


# --- the rules --------------------------------------------------------------------------------------------


def test_every_never_holds_except_the_known_breaks() -> None:
    messages: list[str] = []
    for rule in layers.NEVERS:
        found = breaks(rule)
        known = {(k.importer, k.imported) for k in layers.KNOWN if k.rule == rule.key}
        for pair in sorted(set(found) - known):
            messages.append(f"NEW break of {rule.key} ({rule.why}): {pair[0]} → {pair[1]} at {found[pair]}")
        for pair in sorted(known - set(found)):
            messages.append(f"FIXED (remove from layers.KNOWN): {rule.key}: {pair[0]} → {pair[1]}")
    assert not messages, "\n".join(messages)


def upward() -> dict[tuple[str, str], str]:
    """``(importer, imported) → first place`` for every import of a layer above the importer's that no
    never already names (each break is listed once, under its most specific rule)."""
    named = {pair for rule in layers.NEVERS for pair in breaks(rule)}
    found: dict[tuple[str, str], str] = {}
    for e in edges():
        for target in (e.imported, e.via):
            if target is None:
                continue
            low, high = _rank(e.importer), _rank(target)
            if low is not None and high is not None and high < low and (e.importer, target) not in named:
                found.setdefault((e.importer, target), e.where)
    return found


def test_every_layer_imports_only_its_own_and_lower_layers() -> None:
    found = upward()
    known = {(k.importer, k.imported) for k in layers.KNOWN if k.rule == layers.DOWNWARD}
    new = [f"{a} → {b} at {found[(a, b)]}" for a, b in sorted(set(found) - known)]
    fixed = [f"{a} → {b}" for a, b in sorted(known - set(found))]
    assert not new and not fixed, f"NEW upward imports: {new}\nFIXED (remove from layers.KNOWN): {fixed}"


def test_no_import_circles_except_the_known_ones() -> None:
    found = circles()
    known = set(layers.KNOWN_CIRCLES)
    new = [" ⇄ ".join(c) for c in sorted(found - known)]
    fixed = [" ⇄ ".join(c) for c in sorted(known - found)]
    assert not new and not fixed, f"new circles: {new}; fixed (remove from layers.KNOWN_CIRCLES): {fixed}"


def _light_modules() -> list[str]:
    return sorted(m for m in modules() if matches(m, layers.LIGHT))


_BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(layers.HEAVY)!r}:
            raise ImportError('blocked heavy import: ' + name)
sys.meta_path.insert(0, _Block())
"""


def test_mesh_library_and_router_import_without_engines() -> None:
    light = _light_modules()
    assert {"edge_agent.mesh.member", "edge_agent.mesh.direct", "edge_agent.sync.exchange"} <= set(light)
    code = _BLOCKER + "".join(f"import {m}\n" for m in light)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]


def test_readme_draws_the_declared_map() -> None:
    text = (REPO / "README.md").read_text()
    assert README_BEGIN in text and README_END in text, "README's Architecture section lost its map block"
    block = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    drawn = block.strip().removeprefix("```text").removesuffix("```").strip("\n")
    assert drawn == layers.render(), "README's map differs: paste layers.render() between the markers"


# --- the checker catches what it must (a test that cannot fail is a defect) --------------------------------


def test_the_checker_sees_lazy_relative_and_lazily_exported_imports() -> None:
    source = (
        "def later():\n"
        "    from edge_agent import Hearth\n"
        "    from ..cli import common\n"
        "    import benchmarks.llm\n"
    )
    path = REPO / "edge_agent" / "voice" / "x.py"
    got = {(e.imported, e.via) for e in _edges_of("edge_agent.voice.x", path, source)}
    assert ("edge_agent", "edge_agent.hearth") in got
    assert ("edge_agent.cli.common", None) in got
    assert ("benchmarks.llm", None) in got


def _current_known() -> str:
    """Today's breaks as the map's ``KNOWN``/``KNOWN_CIRCLES`` source (to paste when one is fixed)."""
    lines = ["KNOWN: tuple[Known, ...] = ("]
    for key, found in [(r.key, breaks(r)) for r in layers.NEVERS] + [(layers.DOWNWARD, upward())]:
        lines += [f'    Known("{key}", "{a}", "{b}"),' for a, b in sorted(found)]
    lines += [")", "KNOWN_CIRCLES: tuple[tuple[str, ...], ...] = ("]
    lines += ["    (" + ", ".join(f'"{m}"' for m in c) + ")," for c in sorted(circles())]
    return "\n".join([*lines, ")"])


def _write_readme() -> None:
    """Put ``layers.render()`` between README's markers."""
    path = REPO / "README.md"
    head, rest = path.read_text().split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_BEGIN}\n```text\n{layers.render()}\n```\n{README_END}{tail}")


if __name__ == "__main__":  # python -m tests.test_layering [--readme]: today's breaks [or redraw README]
    if sys.argv[1:] == ["--readme"]:
        _write_readme()
    else:
        print(_current_known())
