"""The declared layering map: which layers exist and what each must never import (issue 22, point 9).

One data structure, read by ``tests/test_layering.py`` (which checks every rule over every file, lazy
imports inside functions included) and rendered into README's Architecture section (the test checks the
README's block equals ``render()``). It lives beside the tests, not in ``edge_agent``, because it governs
the whole repository — benchmarks, tests, the Home Assistant component and its end-to-end suite — and no
installed code reads it.

Patterns are ``fnmatch`` patterns over dotted module names: ``edge_agent.mesh`` is the package's own
``__init__`` (its public surface), ``edge_agent.mesh.*`` every module below it. Files outside the Python
packages are named by their path: ``integration.custom_components.hearth.*`` is the Home Assistant
component, ``integration.e2e.*`` its end-to-end suite. A name a package exports lazily (``_EXPORTS``)
counts as an import of the module that defines it, unless the package is itself an allowed surface.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

ISSUE = 22


def tree(module: str) -> tuple[str, str]:
    """A package and everything below it."""
    return (module, f"{module}.*")


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]
    role: str


@dataclass(frozen=True)
class Never:
    """Modules matching ``importers`` (but not ``importers_except``) never import ``imported``
    (unless what they name matches ``imported_except``: an allowed surface)."""

    key: str
    importers: tuple[str, ...]
    imported: tuple[str, ...]
    why: str
    importers_except: tuple[str, ...] = ()
    imported_except: tuple[str, ...] = ()


@dataclass(frozen=True)
class Known:
    """A break of a rule the code still has: the test fails when it appears unlisted *and* when it is
    gone while still listed, so this list only shrinks."""

    rule: str
    importer: str
    imported: str
    issue: int = ISSUE


# Top to bottom: a module imports only its own layer and the layers below it (rule ``downward``), and
# not every one of those: see NEVERS. A module belongs to the layer of its most specific pattern
# (``edge_agent.client.schemas`` sits low, the rest of ``edge_agent.client`` above the router).
DOWNWARD = "downward"
LAYERS: tuple[Layer, ...] = (
    Layer(
        "outside",
        (*tree("benchmarks"), *tree("tests"), *tree("integration.e2e")),
        "benchmarks, tests, HA end-to-end",
    ),
    Layer("ha-component", tree("integration.custom_components.hearth"), "Home Assistant integration"),
    Layer("cli", (*tree("edge_agent.cli"), "edge_agent.__main__"), "the typer commands"),
    Layer("root", ("edge_agent.hearth",), "Hearth: the composition root"),
    Layer(
        "local-api",
        tree("edge_agent.local_api"),
        "the running agent's socket: its server (the root starts it), its client (the CLI)",
    ),
    Layer(
        "parts",
        (
            "edge_agent.service",
            "edge_agent.agent_facade",
            "edge_agent.status",
            *tree("edge_agent.updates"),
            *tree("edge_agent.voice"),
            *tree("edge_agent.discovery"),
            *tree("edge_agent.ha_discovery"),
            "edge_agent.ha_bridge",
        ),
        "mesh service, the agent's façade, device status, updates, voice, discovery, HA discovery/bridge",
    ),
    Layer(
        "client-api",
        (*tree("edge_agent.client"), "edge_agent.facade"),
        "the client API (HA, later HTTP), member routing; the façade type",
    ),
    Layer(
        "routing",
        (
            "edge_agent.router",
            "edge_agent.routing_decision",
            "edge_agent.agent",
            "edge_agent.task_specs",
            "edge_agent.task_benchmarks",
        ),
        "router (+ its decisions), agent, task registry (+ its self-benchmarks)",
    ),
    Layer(
        "packs",
        tree("edge_agent.packs"),
        "pack builders (hearth models build) and the host quality gate: they run the engines",
    ),
    Layer("engines", (*tree("edge_agent.engines"), *tree("edge_agent.audio")), "onnxruntime engines, audio"),
    Layer(
        "models",
        (*tree("edge_agent.models"), *tree("edge_agent.profiles")),
        "what a pack is, the store, plans, quality scores, profiles",
    ),
    Layer("config", ("edge_agent.config", "edge_agent.connect"), "TOML config → settings values"),
    Layer(
        "settings",
        (
            "edge_agent.router_settings",
            "edge_agent.voice.settings",
            "edge_agent.discovery.settings",
            "edge_agent.ha_discovery.settings",
        ),
        "the parts' frozen settings values, built by config (pydantic only)",
    ),
    Layer("mesh", (*tree("edge_agent.mesh"), *tree("edge_agent.sync")), "the mesh library, model updates"),
    Layer("schemas", ("edge_agent.client.schemas",), "every task's request and result models, pydantic only"),
    Layer(
        "base",
        (
            "edge_agent",
            "edge_agent._exports",
            "edge_agent.errors",
            "edge_agent.tasks",
            "edge_agent.validation",
            "edge_agent.paths",
            "edge_agent.processes",
            "edge_agent.supervision",
            "edge_agent.aio",
        ),
        "errors, tasks, supervision, small helpers",
    ),
)

_ROOT = ("edge_agent.hearth",)
_ABOVE_MESH = (
    "edge_agent.config",
    "edge_agent.connect",
    *tree("edge_agent.profiles"),
    *tree("edge_agent.engines"),
    *tree("edge_agent.models"),
    *tree("edge_agent.packs"),
    "edge_agent.agent",
    "edge_agent.task_specs",
    "edge_agent.task_benchmarks",
    "edge_agent.router",
    "edge_agent.routing_decision",
    "edge_agent.service",
    "edge_agent.hearth",
    *tree("edge_agent.local_api"),
    *tree("edge_agent.cli"),
)

NEVERS: tuple[Never, ...] = (
    Never(
        "mesh-below-config",
        (*tree("edge_agent.mesh"), *tree("edge_agent.sync")),
        _ABOVE_MESH,
        "the mesh takes settings as values, never reads config or runs engines",
    ),
    Never(
        "engines-off-mesh",
        tree("edge_agent.engines"),
        (*tree("edge_agent.mesh"), *tree("edge_agent.sync"), "edge_agent.router"),
        "an engine runs a model; where a request came from is not its business",
    ),
    Never(
        "models-below-engines", tree("edge_agent.models"), tree("edge_agent.engines"), "packs know no engine"
    ),
    Never(
        "cli-off-benchmarks", tree("edge_agent.cli"), tree("benchmarks"), "the wheel ships without benchmarks"
    ),
    Never("benchmarks-off-tests", tree("benchmarks"), tree("tests"), "benchmarks run without the test tree"),
    Never("e2e-off-tests", tree("integration.e2e"), tree("tests"), "the HA end-to-end suite stands alone"),
    Never(
        "ha-component-client-only",
        tree("integration.custom_components.hearth"),
        tree("edge_agent"),
        "a client library (edge_agent.client), the mesh's public surface (edge_agent.mesh itself, not its"
        " modules) and the errors; never the agent's insides",
        imported_except=(*tree("edge_agent.client"), "edge_agent.mesh", "edge_agent.errors"),
    ),
    Never(
        "voice-off-cli",
        tree("edge_agent.voice"),
        tree("edge_agent.cli"),
        "voice is a part; the CLI drives it",
    ),
    Never(
        "root-from-entry-points-only",
        (*tree("edge_agent"), *tree("integration")),
        _ROOT,
        "the root assembles the parts; only the CLI and the local API hold it (benchmarks and tests, which"
        " measure and drive whole agents as a user's entry point does, hold the one assembly too rather"
        " than build a second)",
        importers_except=(*tree("edge_agent.cli"), "edge_agent.__main__", *tree("edge_agent.local_api")),
    ),
)

# The mesh library: what a client-only install (requirements/mesh.txt) imports without these packages.
HEAVY: tuple[str, ...] = (
    "onnxruntime",
    "onnxruntime_genai",
    "torch",
    "transformers",
    "sentencepiece",
    "tokenizers",
    "amqtt",
    "numpy",
    "jinja2",
)
LIGHT: tuple[str, ...] = (
    *tree("edge_agent.mesh"),
    *tree("edge_agent.sync"),
    *tree("edge_agent.client"),
    *tree("edge_agent.profiles"),
    "edge_agent",
    "edge_agent.errors",
    "edge_agent.tasks",
    "edge_agent.validation",
    "edge_agent.paths",
    "edge_agent.processes",
    "edge_agent.supervision",
    "edge_agent._exports",
    "edge_agent.router",
    "edge_agent.router_settings",
    "edge_agent.routing_decision",
    "edge_agent.task_specs",
    "edge_agent.task_benchmarks",
    "edge_agent.hearth",
    *tree("edge_agent.local_api"),
    "edge_agent.config",
    "edge_agent.connect",
    "edge_agent.models.store",
    "edge_agent.models.selection",
    "edge_agent.models.quality",
    "edge_agent.packs",
    "edge_agent.packs.host_gate",
)

# Breaks still open, one per (importer, imported module), under the most specific rule they break
# (``downward`` only for those no never names). Regenerate with ``python -m tests.test_layering``.
KNOWN: tuple[Known, ...] = ()

# Import circles (strongly connected modules, lazy imports included) still open, each as its sorted
# members; none may be added.
KNOWN_CIRCLES: tuple[tuple[str, ...], ...] = ()


def render() -> str:
    """The map as README's Architecture section draws it (checked equal by the test)."""
    width = max(len(layer.name) for layer in LAYERS)
    pad = " " * (width + 4)
    lines = [
        "Layers, top to bottom: a module imports its own layer and the layers below it. Names are",
        "edge_agent's modules and packages (a package with everything below it) unless they start with",
        "a top folder of the repository (benchmarks, tests, integration).",
        "",
    ]
    for layer in LAYERS:
        shown = _short(layer.modules)
        lines += textwrap.wrap(shown, 104, initial_indent=f"  {layer.name:<{width}}  ", subsequent_indent=pad)
        lines.append(f"{pad}({layer.role})")
    lines += ["", "Rules (tests/test_layering.py: every file, lazy imports included):", ""]
    rules = [(DOWNWARD, "no module imports a layer above its own", "the order above")]
    for rule in NEVERS:
        src = _short(rule.importers)
        if rule.importers_except:
            src = f"anything but {_short(rule.importers_except)}"
        dst = _short(rule.imported)
        if rule.imported_except:
            dst = f"anything but {_short(rule.imported_except)}"
        rules.append((rule.key, f"{src} never imports {dst}", rule.why))
    for key, text, why in rules:
        lines += textwrap.wrap(f"{key}: {text}", 104, initial_indent="  ",
                               subsequent_indent="      ")  # fmt: skip
        lines += textwrap.wrap(f"({why})", 104, initial_indent="      ", subsequent_indent="       ")
    lines.append("  no-circles: no import circles")
    lines += [
        "",
        f"Breaks the code still has are listed in the map as known, with their issue (issue {ISSUE}).",
    ]
    return "\n".join(lines)


def _short(patterns: tuple[str, ...]) -> str:
    names = [p.removesuffix(".*") for p in patterns]
    return ", ".join(dict.fromkeys(n.removeprefix("edge_agent.") for n in names))
