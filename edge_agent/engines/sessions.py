"""onnxruntime session options shared by the batch engines (embeddings, translation)."""

from __future__ import annotations

import onnxruntime as ort


def cpu_session_options(threads: int) -> ort.SessionOptions:
    """All graph optimizations, ``threads`` intra-op threads, quiet logs, and no memory arena: a
    batch's activation memory goes back to the system afterwards, which bounds an appliance's RSS."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    return opts
