"""Hearth edge agent: runs ONNX model packs chosen for the device's firmware profile."""

from edge_agent.errors import HearthError

__all__ = ["HearthError", "__version__"]
__version__ = "0.1.0"
