"""Where the bytes of an export's int8 models go, against their float32 models (prints JSON).

For each runtime with a float32 and an int8 file (TFLite, ONNX, OpenVINO) it
splits the int8 file into the int8 weights themselves and everything else
(per-channel scales and zero points, biases, activation ranges, the graph),
and gives the ratio float32 / int8 next to the ceiling that the weights
alone allow (float32 / int8 weights, about 4.05x).

Usage: `.venv/bin/python bench/export_sizes.py EXPORT_DIR`
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
from typing import Any

import numpy as np


def _one(folder: str, pattern: str) -> str:
    found = [p for p in sorted(glob.glob(os.path.join(folder, pattern))) if "_dynamic_" not in p]
    if len(found) != 1:
        raise FileNotFoundError(f"Expected one {pattern!r} in {folder!r}, found {found}.")
    return found[0]


def tflite_parts(path: str) -> dict[str, int]:
    """Bytes of a `.tflite` by part, from the interpreter's tensor details."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(path)
    parts: collections.Counter = collections.Counter()
    for detail in interpreter.get_tensor_details():
        params = detail["quantization_parameters"]
        parts["quantization scales (float32)"] += 4 * len(params["scales"])
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation: no buffer
            continue
        if value.dtype == np.int8 and value.ndim >= 2:
            parts["int8 weights"] += value.nbytes
        elif value.dtype == np.int32 and value.ndim == 1 and value.size > 2:
            parts["int32 biases"] += value.nbytes
    parts["quantization zero points (int64)"] = _zero_point_bytes(path)
    parts["graph and the rest"] = os.path.getsize(path) - sum(parts.values())
    return dict(parts)


def _zero_point_bytes(path: str) -> int:
    """Bytes of a `.tflite`'s zero-point vectors, each shared vector counted once."""
    from ai_edge_litert.schema_py_generated import Model

    with open(path, "rb") as f:
        model = Model.GetRootAs(f.read(), 0)
    vectors: dict[int, int] = {}  # position in the file -> entries
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        for tensor in map(subgraph.Tensors, range(subgraph.TensorsLength())):
            params = tensor.Quantization()
            if params is not None and params.ZeroPointLength():
                position = params._tab.Vector(params._tab.Offset(10))  # zero_point's field
                vectors[position] = params.ZeroPointLength()
    return 8 * sum(vectors.values())


def onnx_parts(path: str) -> dict[str, int]:
    """Bytes of an `.onnx` by part: initializers by type and role, nodes, metadata."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    parts: collections.Counter = collections.Counter()
    for tensor in graph.initializer:
        value = onnx.numpy_helper.to_array(tensor)
        role = ("weights" if value.ndim >= 2 else "scalars" if value.size == 1 else "vectors")
        parts[f"{value.dtype.name} {role}"] += tensor.ByteSize()
    parts["nodes (ops, names, attributes)"] = sum(node.ByteSize() for node in graph.node)
    parts["metadata (labels, export.json)"] = sum(p.ByteSize() for p in model.metadata_props)
    parts["graph and the rest"] = os.path.getsize(path) - sum(parts.values())
    return dict(parts)


def openvino_parts(xml: str) -> dict[str, int]:
    """Bytes of an OpenVINO IR by part: the `.xml` graph and the `.bin` constants by role."""
    import openvino as ov

    model = ov.Core().read_model(xml)
    parts: collections.Counter = collections.Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        value = op.get_data()
        users = sorted({t.get_node().get_type_name() for t in op.output(0).get_target_inputs()})
        parts[f"{value.dtype.name} constants read by {'+'.join(users)}"] += value.nbytes
    binary = os.path.getsize(xml[:-4] + ".bin")
    parts["constants shared in the .bin"] = binary - sum(parts.values())
    parts[".xml graph"] = os.path.getsize(xml)
    return dict(parts)


def breakdown(folder: str) -> dict[str, Any]:
    """The int8 and float32 files of each runtime in an export folder, split by part.

    Args:
        folder: An export folder (`vispipe export`).

    Returns:
        Per runtime: sizes, the ratio, the weights-only ceiling (a note
        instead when the int8 file has no int8 weights) and the parts.
    """
    files = {
        "tflite": (lambda: _one(folder, "tflite/*_float32.tflite"),
                   lambda: _one(folder, "tflite/*_int8.tflite"), tflite_parts),
        "onnx": (lambda: _one(folder, "onnx/*_float32.onnx"),
                 lambda: _one(folder, "onnx/*_int8.onnx"), onnx_parts),
        "openvino": (lambda: _one(folder, "openvino/float32/*.xml"),
                     lambda: _one(folder, "openvino/int8/*.xml"), openvino_parts),
    }
    result: dict[str, Any] = {}
    for runtime, (float32, int8, parts) in files.items():
        try:
            f32, i8 = float32(), int8()
        except FileNotFoundError as e:
            result[runtime] = {"skipped": str(e)}
            continue
        split = parts(i8)
        weights = split.get("int8 weights", 0) or split.get("int8 constants read by Convert", 0)
        result[runtime] = {"float32_bytes": size(f32), "int8_bytes": size(i8),
                           "ratio": round(size(f32) / size(i8), 3),
                           "weights_only_ceiling": (round(size(f32) / weights, 3) if weights
                                                    else "no int8 weights found"),
                           "int8_parts": split}
    return result


def size(path: str) -> int:
    """A model's bytes (an OpenVINO `.xml` with its `.bin`)."""
    extra = os.path.getsize(path[:-4] + ".bin") if path.endswith(".xml") else 0
    return os.path.getsize(path) + extra


if __name__ == "__main__":
    print(json.dumps(breakdown(sys.argv[1]), indent=1))
