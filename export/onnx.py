"""ONNX models: float32, float16 and int8 (static QDQ), run with ONNX Runtime.

Every variant keeps the contract: uint8 `images` `[batch, height, width,
channels]` in (batch, height and width dynamic: the graph squash-resizes to
the trained size and normalizes), `probabilities`, `label_ids` (int32) and
`scores` out.

Choices, recorded in each row's details and in `onnx/export.json`:

- opset 17 (`ONNX_OPSET`): per-channel QDQ quantization needs 13 or later;
  17 is supported by ONNX Runtime (1.11+, also its web and mobile builds),
  TensorRT 8.6+, OpenVINO and tf2onnx 1.17 (which converts up to 18).
- dynamic batch (and height and width, because the graph resizes): one file
  serves single images and batches.
- float16: weights and compute in float16 (ONNX Runtime's converter), inputs
  and outputs unchanged; `Resize` and `TopK` stay float32.
- int8: ONNX Runtime's static quantizer in QDQ format (what TensorRT and the
  NPU runtimes read), int8 per-channel weights and uint8 activations,
  min-max calibrated on the same training images as the TFLite int8 model,
  after ONNX Runtime's pre-processing (shape inference, BatchNorm folding).
  Weights use 7 bits (`reduce_range`), as ONNX Runtime advises for x86 CPUs
  without VNNI, whose 8-bit dot products otherwise saturate.
- compact files: short node and tensor names, no shape annotations, no
  all-zero zero points (`_compact`; outputs unchanged bit for bit).

The labels and `export.json` are stored in the model's `metadata_props`
(`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`)
and written beside the files.

Example:

```python
graph = trace_contract(model, spec, "out/.contract")
convert_onnx(graph, "out/.onnx/float32.onnx")
derive_onnx("out/.onnx/float32.onnx", "out/onnx/mnist_int8.onnx", "int8",
            calibration=train_images[:200], metadata={"labels": "[...]"})
probs = onnx_runner("out/onnx/mnist_int8.onnx")(test_images)
```
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from vispipe.export.contract import INPUT_IMAGES, OUTPUT_PROBABILITIES
from vispipe.export.contract_graph import OUTPUT_ORDER, ContractGraph, output_types
from vispipe.export.verify import check_top_k

__all__ = [
    "ONNX_VARIANTS",
    "ONNX_OPSET",
    "convert_onnx",
    "derive_onnx",
    "onnx_metadata",
    "onnx_runner",
]

ONNX_VARIANTS = ("float32", "float16", "int8")
ONNX_OPSET = 17
_INPUT_AXES = ("batch", "height", "width")
_FLOAT16_KEEP_FLOAT32 = ("Resize", "TopK")


def _rename(graph, old: str, new: str) -> None:
    """Renames a tensor everywhere in `graph` (producers, consumers, graph outputs)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _name_by_position(proto, graph: ContractGraph) -> None:
    """Names the input and the outputs (which the converter keeps in order) and checks them."""
    import onnx

    expected = output_types(graph.spec)
    if len(proto.graph.input) != 1 or len(proto.graph.output) != len(OUTPUT_ORDER):
        raise RuntimeError(f"tf2onnx gave {len(proto.graph.input)} input(s) and "
                           f"{len(proto.graph.output)} output(s), expected 1 and "
                           f"{len(OUTPUT_ORDER)}.")
    _rename(proto.graph, proto.graph.input[0].name, INPUT_IMAGES)
    for dim, axis in zip(proto.graph.input[0].type.tensor_type.shape.dim, _INPUT_AXES):
        dim.dim_param = axis
    for output, name in zip(list(proto.graph.output), OUTPUT_ORDER):
        _rename(proto.graph, output.name, name)
        tensor = output.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        last = tensor.shape.dim[-1].dim_value if tensor.shape.dim else 0
        if (dtype, last) != expected[name]:
            raise RuntimeError(f"ONNX output {len(proto.graph.output)} ({name}) is {dtype} "
                               f"[..., {last}], expected {expected[name][0]} "
                               f"[..., {expected[name][1]}].")
        tensor.shape.dim[0].dim_param = "batch"


def _sort_topologically(graph) -> None:
    """Orders `graph.node` so every node follows its inputs' producers.

    ONNX Runtime's float16 converter appends the Cast nodes it inserts around
    the ops it keeps in float32 at the end, which the ONNX checker rejects.
    """
    producer = {name: node for node in graph.node for name in node.output}
    done: set[int] = set()
    ordered = []

    def visit(node) -> None:
        stack = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if id(current) in done:
                continue
            if expanded:
                done.add(id(current))
                ordered.append(current)
                continue
            stack.append((current, True))
            stack += [(producer[name], False) for name in current.input
                      if name in producer and id(producer[name]) not in done]

    for node in graph.node:
        visit(node)
    nodes = [type(n)() for n in ordered]
    for copy, node in zip(nodes, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _compact(proto) -> bool:
    """Drops what the runtime does not need: long names, shape annotations, zero zero-points.

    Node and internal tensor names become `n<i>` / `t<i>` (the input and
    outputs keep theirs); `value_info` (shape inference's annotations) is
    dropped; a `DequantizeLinear` zero point that is all zeros (the
    symmetric int8 weights' and the int32 biases': 0 is the default) is
    left out, and initializers nothing reads are removed. ONNX Runtime
    computes the same outputs bit for bit: on ResNet-20 int8 this is 21% of
    the file (375 KB -> 296 KB), on MobileNetV2 int8 9%.

    Args:
        proto: The `onnx.ModelProto`, changed in place.

    Returns:
        Whether names were shortened (not in a graph with subgraphs).
    """
    import onnx

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if (node.op_type == "DequantizeLinear" and len(node.input) == 3
                and node.input[2] in initializers
                and not np.any(onnx.numpy_helper.to_array(initializers[node.input[2]]))):
            del node.input[2]
    if any(a.g.node or a.graphs for node in graph.node for a in node.attribute):
        return False  # Subgraphs (If, Loop) read outer names: keep them.
    kept = {v.name for v in (*graph.input, *graph.output)}
    used = {name for node in graph.node for name in node.input} | kept
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    del graph.value_info[:]
    short: dict[str, str] = {}
    numbers = itertools.count()

    def rename(name: str) -> str:
        if not name or name in kept:
            return name
        if name not in short:
            short[name] = next(f"t{i}" for i in numbers if f"t{i}" not in kept)
        return short[name]

    for index, node in enumerate(graph.node):
        node.name = f"n{index}"
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    return True


def _save(proto, path: str) -> None:
    import onnx

    tmp = f"{path}.partial"
    onnx.save(proto, tmp)
    os.replace(tmp, path)


def convert_onnx(graph: ContractGraph, path: str, *, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Converts the traced contract to a float32 ONNX model with tf2onnx.

    Args:
        graph: The contract (`trace_contract`).
        path: The `.onnx` file to write.
        opset: The ONNX opset.

    Returns:
        Details for the report: opset, dynamic axes, input and output names.

    Raises:
        RuntimeError: The converted graph's inputs or outputs are not the
            contract's.
    """
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(graph.function, input_signature=[graph.input_spec],
                                             opset=opset)
    _name_by_position(proto, graph)
    _save(proto, path)
    return {"opset": opset, "dynamic_axes": {INPUT_IMAGES: list(_INPUT_AXES),
                                             **{name: ["batch"] for name in OUTPUT_ORDER}},
            "input": INPUT_IMAGES, "outputs": list(OUTPUT_ORDER),
            "converter": f"tf2onnx {tf2onnx.__version__}"}


def _calibration_reader(images: np.ndarray):
    """ONNX Runtime's `CalibrationDataReader` over uint8 images, one per batch."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._images = iter(np.asarray(images, np.uint8))

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {INPUT_IMAGES: image[None]}

    return Reader()


def _quantize_int8(source: str, path: str, calibration: np.ndarray) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _calibration_reader(calibration)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as folder:
        prepared = os.path.join(folder, "prepared.onnx")
        quant_pre_process(source, prepared)
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2, AVX-512)
        # saturate 8x8-bit dot products: full-range weights cost LeNet 0.8
        # top-1 points on MNIST there (98.57% against 99.37% on 3,000 test
        # images), 7-bit weights 0.03.
        quantize_static(prepared, path, reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=True,
                        calibrate_method=CalibrationMethod.MinMax)
    return {"quantization": "static QDQ: int8 per-channel weights in 7 bits (reduce_range), "
                            "uint8 activations, min-max calibration",
            "calibration_images": int(len(calibration))}


def derive_onnx(
    float32_path: str,
    path: str,
    variant: str,
    *,
    calibration: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Writes one variant from the float32 model, with the metadata stored inside.

    Args:
        float32_path: The float32 model (`convert_onnx`).
        path: The `.onnx` file to write.
        variant: One of `ONNX_VARIANTS`.
        calibration: uint8 training images `[N, H, W, C]` ("int8").
        metadata: Stored as `metadata_props` (e.g. labels, export.json).

    Returns:
        Details for the report.

    Raises:
        ValueError: Unknown variant, or "int8" without calibration images.
    """
    import onnx

    if variant not in ONNX_VARIANTS:
        raise ValueError(f"ONNX variant: expected one of {ONNX_VARIANTS}, got {variant!r}.")
    if variant == "int8" and (calibration is None or len(calibration) == 0):
        raise ValueError("ONNX int8 needs calibration images (uint8 training images).")
    details: dict[str, Any] = {"variant": variant}
    tmp = f"{path}.partial"
    if variant == "float32":
        shutil.copyfile(float32_path, tmp)
    elif variant == "float16":
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )

        model = convert_float_to_float16(
            onnx.load(float32_path), keep_io_types=True,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *_FLOAT16_KEEP_FLOAT32])
        _sort_topologically(model.graph)
        onnx.save(model, tmp)
        details["float32_ops"] = list(_FLOAT16_KEEP_FLOAT32)
    else:
        details.update(_quantize_int8(float32_path, tmp, calibration))
    model = onnx.load(tmp)
    if _compact(model):
        details["names"] = "short (n<i> nodes, t<i> tensors)"
    onnx.helper.set_model_props(model, dict(metadata or {}))
    model.doc_string = "vispipe image classifier: uint8 images in; probabilities, label_ids, scores out"
    onnx.checker.check_model(model)
    _save(model, tmp)
    os.replace(tmp, path)
    return details


def onnx_metadata(path: str) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (labels, export.json)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def onnx_runner(path: str, num_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Loads an ONNX model in ONNX Runtime (CPU).

    Args:
        path: The `.onnx` file.
        num_threads: Intra-op threads (None: ONNX Runtime's default, one
            per physical core).

    Returns:
        `images (uint8 [B, H, W, C]) -> probabilities (float32 [B, classes])`,
        which checks on every call that the label ids and scores are the
        probabilities' top-k; `runner.outputs(images)` returns all three.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if num_threads:
        options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(list(OUTPUT_ORDER), {INPUT_IMAGES: np.asarray(images, np.uint8)})
        return dict(zip(OUTPUT_ORDER, values))

    def run(images: np.ndarray) -> np.ndarray:
        out = outputs(images)
        check_top_k(*(out[name] for name in OUTPUT_ORDER), path)
        return out[OUTPUT_PROBABILITIES]

    run.outputs = outputs
    run.session = session
    return run
