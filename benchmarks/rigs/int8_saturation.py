"""Print, as JSON, one int8 MatMul (u8 activations x weights) against its exact answer, for full-range s8,
7-bit s8 and u8 weights: run it natively and under ``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N = 64, 8


def run(weights: np.ndarray) -> dict[str, int]:
    zero_w = np.array(0, weights.dtype)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W", "az", "wz"], ["Y"])],
        "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, N])],
        [
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array(0, np.uint8), "az"),
            numpy_helper.from_array(zero_w, "wz"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    activations = np.full((1, K), 255, np.uint8)  # the largest u8: the worst case for a 16-bit pair sum
    got = int(session.run(None, {"A": activations})[0][0, 0])
    return {"got": got, "exact": int(activations.astype(np.int64).sum()) * int(weights[0, 0])}


if __name__ == "__main__":
    print(json.dumps({
        "full range s8": run(np.full((K, N), 127, np.int8)),
        "7-bit s8": run(np.full((K, N), 63, np.int8)),
        "u8": run(np.full((K, N), 255, np.uint8)),
    }))  # fmt: skip
