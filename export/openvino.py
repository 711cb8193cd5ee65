"""OpenVINO IR models: float32, float16 and int8 (NNCF), run with OpenVINO's CPU plugin.

Every variant keeps the contract: uint8 `images` `[batch, height, width,
channels]` in (batch, height and width dynamic: the graph squash-resizes to
the trained size and normalizes), `probabilities`, `label_ids` (int32) and
`scores` out. A variant is a folder holding `<name>.xml` and `<name>.bin`.

Choices, recorded in each row's details and in `openvino/export.json`:

- converted with OpenVINO's TensorFlow frontend straight from the traced
  contract (not through ONNX, so one converter's failure does not take the
  other format down);
- float16: weights stored in float16 (`compress_to_fp16`); the CPU plugin
  computes in float32, GPUs and NPUs in float16;
- int8: NNCF post-training quantization (symmetric int8 weights and
  activations, full bias correction, 7-bit weights by NNCF's overflow fix)
  calibrated on the same training images as the TFLite int8 model; ignored
  scopes, the MIXED preset and quantile ranges were measured and not better
  (bench/README.md); its graph is then stored in float16 (`_to_float16`:
  the int8 weights stay int8, NNCF's float32 scales, ranges and biases
  become float16; `compress_to_fp16` leaves a quantized model unchanged);
- every variant's IR is stored compactly, without changing a value:
  identical constants shared, layers named by position (`n<i>`; the input
  and outputs keep their names), no indentation in the `.xml`;
- verified with `INFERENCE_PRECISION_HINT=f32` and `PERFORMANCE_HINT=LATENCY`,
  so a CPU with bfloat16 units does not silently lower the float models.

The labels and `export.json` are stored in the IR's `rt_info` under
`vispipe` (`model.get_rt_info(["vispipe", "labels"])`) and written beside the
folders.

Example:

```python
graph = trace_contract(model, spec, "out/.contract")
ir, details = convert_openvino(graph)
write_openvino(ir, "out/openvino/int8/mnist.xml", "int8", calibration=train_images[:200])
probs = openvino_runner("out/openvino/int8/mnist.xml")(test_images)
```
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Callable

import numpy as np

from vispipe.export.contract import INPUT_IMAGES, OUTPUT_PROBABILITIES
from vispipe.export.contract_graph import OUTPUT_ORDER, ContractGraph, output_types
from vispipe.export.verify import check_top_k

__all__ = [
    "OPENVINO_VARIANTS",
    "RUNTIME_CONFIG",
    "convert_openvino",
    "write_openvino",
    "openvino_runner",
]

OPENVINO_VARIANTS = ("float32", "float16", "int8")
RUNTIME_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def convert_openvino(graph: ContractGraph):
    """Converts the traced contract to an OpenVINO model (in memory).

    The outputs keep the function's order and are named by position; each
    is checked for its type and width.

    Args:
        graph: The contract (`trace_contract`).

    Returns:
        `(model, details)`: the `openvino.Model` and, for the report, the
        dynamic axes, input and output names and the converter.

    Raises:
        RuntimeError: The converted model's inputs or outputs are not the
            contract's.
    """
    import openvino as ov

    model = ov.convert_model(graph.concrete())
    if len(model.inputs) != 1 or len(model.outputs) != len(OUTPUT_ORDER):
        raise RuntimeError(f"OpenVINO gave {len(model.inputs)} input(s) and "
                           f"{len(model.outputs)} output(s), expected 1 and {len(OUTPUT_ORDER)}.")
    model.inputs[0].get_tensor().set_names({INPUT_IMAGES})
    expected = output_types(graph.spec)
    for index, (output, name) in enumerate(zip(model.outputs, OUTPUT_ORDER)):
        dtype = output.get_element_type().to_dtype().name
        last = output.get_partial_shape()[-1]
        width = last.get_length() if last.is_static else 0
        if (dtype, width) != expected[name]:
            raise RuntimeError(f"OpenVINO output {index} ({name}) is {dtype} [..., {width}], "
                               f"expected {expected[name][0]} [..., {expected[name][1]}].")
        output.get_tensor().set_names({name})
    details = {"dynamic_axes": {INPUT_IMAGES: ["batch", "height", "width"],
                                **{name: ["batch"] for name in OUTPUT_ORDER}},
               "input": INPUT_IMAGES, "outputs": list(OUTPUT_ORDER),
               "converter": f"openvino {ov.__version__.split('-')[0]} (TensorFlow frontend)"}
    return model, details


def _quantize_int8(model, calibration: np.ndarray):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    images = np.asarray(calibration, np.uint8)
    dataset = nncf.Dataset(list(images), lambda image: image[None])
    # Full bias correction and 7-bit weights in every layer (CPUs without VNNI saturate
    # 8-bit dot products). Agreement with Keras, fast correction -> this: CIFAR-10
    # ResNet-20 (10,000 images) 93.2% -> 97.7%; MobileNetV2 (800) 84.1% -> 93.5%.
    return nncf.quantize(
        model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(images),
        fast_bias_correction=False,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))


def _compact(model) -> None:
    """Shares identical constants and names the layers by position (lossless).

    NNCF gives every FakeQuantize its own range constants, most of them equal
    (MobileNetV2: 163 of 429 constants are repeats); each is a layer of the
    `.xml`, about 450 bytes.
    """
    seen: dict[tuple, Any] = {}
    for index, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() not in ("Parameter", "Result"):
            op.set_friendly_name(f"n{index}")
        if op.get_type_name() != "Constant":
            continue
        value = op.get_data()
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in seen:
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(seen[key].output(0))
        else:
            seen[key] = op
    model.validate_nodes_and_infer_types()


def _to_float16(model):
    """The model with its float32 tensors in float16; its outputs stay float32.

    Used for int8, whose remaining float constants (NNCF's scales, ranges and
    biases) are small. The CPU plugin still computes in float32
    (`RUNTIME_CONFIG`).
    """
    import openvino as ov
    from openvino.passes import ConvertFP32ToFP16, Manager

    manager = Manager()
    manager.register_pass(ConvertFP32ToFP16())
    manager.run_passes(model)
    process = ov.preprocess.PrePostProcessor(model)
    for index, output in enumerate(model.outputs):
        if output.get_element_type() == ov.Type.f16:
            process.output(index).tensor().set_element_type(ov.Type.f32)
    return process.build()


def _save(model, path: str, compress_to_fp16: bool) -> None:
    """`ov.save_model`, then the `.xml` without indentation (MobileNetV2: 43 KB).

    The IR's text holds only elements and attributes, where a raw `<` cannot
    occur, so `>` + whitespace + `<` is always whitespace between tags.
    """
    import openvino as ov

    ov.save_model(model, path, compress_to_fp16=compress_to_fp16)
    with open(path, encoding="utf-8") as f:
        text = re.sub(r">\s+<", "><", f.read())
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_openvino(
    model,
    path: str,
    variant: str,
    *,
    calibration: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Writes one variant as `<path>` (`.xml`) and its `.bin`.

    Args:
        model: The float32 `openvino.Model` (`convert_openvino`; not changed).
        path: The `.xml` file to write (its folder is created).
        variant: One of `OPENVINO_VARIANTS`.
        calibration: uint8 training images `[N, H, W, C]` ("int8").
        metadata: Stored in `rt_info` under "vispipe" (e.g. labels, export.json).

    Returns:
        Details for the report.

    Raises:
        ValueError: Unknown variant, or "int8" without calibration images.
    """
    if variant not in OPENVINO_VARIANTS:
        raise ValueError(
            f"OpenVINO variant: expected one of {OPENVINO_VARIANTS}, got {variant!r}.")
    if variant == "int8" and (calibration is None or len(calibration) == 0):
        raise ValueError("OpenVINO int8 needs calibration images (uint8 training images).")
    details: dict[str, Any] = {"variant": variant, "runtime_config": dict(RUNTIME_CONFIG)}
    if variant == "int8":
        import nncf

        out = _to_float16(_quantize_int8(model, calibration))
        details.update({"quantization": f"NNCF {nncf.__version__} post-training: int8 "
                                        "symmetric weights (7 bits: overflow fix) and activations, "
                                        "full bias correction; scales, ranges and biases in "
                                        "float16",
                        "calibration_images": int(len(calibration))})
    else:
        out = model.clone()
    _compact(out)
    for key, value in (metadata or {}).items():
        out.set_rt_info(value, ["vispipe", key])
    folder = os.path.dirname(os.path.abspath(path))
    partial = f"{folder}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _save(out, os.path.join(partial, os.path.basename(path)), variant == "float16")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return details


def openvino_runner(path: str, num_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Compiles an OpenVINO IR for the CPU (`RUNTIME_CONFIG`).

    Args:
        path: The `.xml` file (its `.bin` beside it).
        num_threads: Inference threads (None: OpenVINO's default).

    Returns:
        `images (uint8 [B, H, W, C]) -> probabilities (float32 [B, classes])`,
        which checks on every call that the label ids and scores are the
        probabilities' top-k; `runner.outputs(images)` returns all three.
    """
    import openvino as ov

    config = dict(RUNTIME_CONFIG)
    if num_threads:
        config["INFERENCE_NUM_THREADS"] = num_threads
    compiled = ov.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        result = request.infer({INPUT_IMAGES: np.asarray(images, np.uint8)})
        return {name: np.array(result[compiled.output(name)]) for name in OUTPUT_ORDER}

    def run(images: np.ndarray) -> np.ndarray:
        out = outputs(images)
        check_top_k(*(out[name] for name in OUTPUT_ORDER), path)
        return out[OUTPUT_PROBABILITIES]

    run.outputs = outputs
    run.compiled = compiled
    return run
