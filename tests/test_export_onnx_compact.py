"""ONNX files carry short names and no redundant parts (vispipe.export.onnx._compact)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vispipe.export.onnx import _compact  # noqa: E402


def _model() -> onnx.ModelProto:
    """A dequantized MatMul whose input and an output are named like short names."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.integers(-100, 100, (3, 4)).astype(np.int8), "weights/int8:0"),
        numpy_helper.from_array(np.float32(0.02), "weights/scale:0"),
        numpy_helper.from_array(np.int8(0), "weights/zero_point:0"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "bias:0"),
        numpy_helper.from_array(np.ones(2, np.float32), "unused:0"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear",
                         ["weights/int8:0", "weights/scale:0", "weights/zero_point:0"],
                         ["weights:0"], name="dense/dequantize"),
        helper.make_node("MatMul", ["t0", "weights:0"], ["dense/matmul:0"], name="dense/matmul"),
        helper.make_node("Add", ["dense/matmul:0", "bias:0"], ["logits:0"], name="dense/add"),
        helper.make_node("Relu", ["logits:0"], ["t1"], name="relu"),
        helper.make_node("Softmax", ["logits:0"], ["probabilities"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("t1", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 4])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"t0": x})


def test_compact_names_never_clash_and_outputs_are_unchanged():
    model = _model()
    assert model.graph.value_info
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    before = _run(model, x)
    assert _compact(model) is True
    onnx.checker.check_model(model)
    for old, new in zip(before, _run(model, x)):
        np.testing.assert_array_equal(new, old)
    tensors = [name for node in model.graph.node for name in node.output]
    tensors += [tensor.name for tensor in model.graph.initializer]
    assert len(set(tensors)) == len(tensors), tensors  # no t<i> equals the input or an output
    assert set(tensors) - {"t1", "probabilities"} <= {f"t{i}" for i in range(2, 10)}
    assert [node.name for node in model.graph.node] == [f"n{i}" for i in range(5)]
    assert len(model.graph.node[0].input) == 2  # the all-zero zero point is left out
    assert len(model.graph.initializer) == 3 and not model.graph.value_info


def test_a_graph_with_subgraphs_keeps_its_names():
    model = _model()
    branch = helper.make_graph([helper.make_node("Identity", ["logits:0"], ["out"])], "branch",
                               [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["condition"], ["chosen"],
                                             then_branch=branch, else_branch=branch))
    assert _compact(model) is False
    assert model.graph.node[1].output[0] == "dense/matmul:0"
