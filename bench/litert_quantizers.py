"""LiteRT post-training quantization: the converter's against ai-edge-quantizer's.

LiteRT documents quantization during conversion (`TFLiteConverter` with
`optimizations` and a representative dataset) as deprecated in favour of
`ai-edge-quantizer` (AEQ), which quantizes a float `.tflite` afterwards. This
bench quantizes the same trained run both ways, from the same float32 model
and the same calibration images (the export's: evenly spaced training
images), and runs each in the LiteRT interpreter on the test split:

- `converter_int8`: full-integer int8, uint8 input and output (what vispipe's
  `tflite_int8` is);
- `aeq_static_wi8_ai8`: AEQ's static recipe, int8 weights and activations
  (min-max), float input and output around the quantized graph;
- `converter_dynamic_int8` / `aeq_dynamic_wi8_afp32`: int8 weights, float
  activations (vispipe's `tflite_dynamic_int8`);
- `aeq_static_wi8_ai8_graph_output`: the AEQ static model read through its
  graph's dequantized softmax output rather than its signature (see
  `_softmax_output_runner`).

It prints one JSON object: per variant the size, gzip size, top-1, agreement
with Keras, largest probability difference, median single-image latency and
how long quantizing took; plus the float32 and Keras reference rows.

Usage (ai-edge-quantizer is not a vispipe dependency; it is pinned in
constraints.txt and installs beside the stack without moving a pin):

    pip install -c constraints.txt ai-edge-quantizer
    python bench/litert_quantizers.py runs/mnist [--verify-limit 0] [--calibration-size 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _aeq(float_path: str, out_path: str, recipe_name: str, calibration: np.ndarray) -> None:
    from ai_edge_quantizer import quantizer, recipe

    quant = quantizer.Quantizer(float_path, getattr(recipe, recipe_name)())
    result = None
    if quant.need_calibration:
        samples = [{"images": image[None]} for image in calibration]
        result = quant.calibrate({"serving_default": samples})
    quant.quantize(result, enable_progress_report=False).export_model(out_path, overwrite=True)


def _softmax_output_runner(path: str):
    """Runs a `.tflite` by its graph's softmax output instead of the signature's.

    AEQ's static recipe leaves the signature's `probabilities` pointing at the
    int8 softmax tensor it replaced (an intermediate the interpreter reuses),
    while the graph's output is its dequantized copy; this reads the copy, to
    measure the quantization itself apart from that defect.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    ops = interpreter._get_ops_details()
    softmax = [op for op in ops if op["op_name"] == "SOFTMAX"][-1]["outputs"][0]
    produced = {softmax} | {op["outputs"][0] for op in ops if op["op_name"] == "DEQUANTIZE"
                            and op["inputs"][0] == softmax}
    output = next(d for d in interpreter.get_output_details() if d["index"] in produced)
    input_index = interpreter.get_input_details()[0]["index"]

    def run(images: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(input_index, list(images.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, np.asarray(images, np.uint8))
        interpreter.invoke()
        value = interpreter.get_tensor(output["index"])
        scale, zero_point = output["quantization"]
        return (value.astype(np.float32) - zero_point) * scale if scale else value

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a completed run folder")
    parser.add_argument("--verify-limit", type=int, default=0,
                        help="test images, spread evenly (0: all)")
    parser.add_argument("--calibration-size", type=int, default=200)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ai_edge_quantizer") is None:
        parser.error("needs ai-edge-quantizer: pip install -c constraints.txt ai-edge-quantizer")

    from vispipe.export.api import ExportOptions, _load_data
    from vispipe.export.contract import load_run
    from vispipe.export.tflite import convert_tflite, tflite_runner
    from vispipe.export.verify import measure, median_latency_ms
    from vispipe.evaluate.evaluator import predict_probabilities

    spec, model = load_run(args.run)
    calibration, _, _, images, labels, split = _load_data(
        spec, ["tflite"], ExportOptions(calibration_size=args.calibration_size,
                                        verify_limit=args.verify_limit))
    reference = np.concatenate([predict_probabilities(model, images[i:i + 256])
                                for i in range(0, len(images), 256)])
    keras_top1 = float(np.mean(reference.argmax(1) == labels))
    rows = {"keras": {"top1": keras_top1, "latency_ms": median_latency_ms(
        lambda x: model.predict_on_batch(x.astype(np.float32)), images)}}
    with tempfile.TemporaryDirectory() as folder:
        float_path = os.path.join(folder, "float32.tflite")
        convert_tflite(model, spec, float_path, "float32")
        variants = {
            "float32": None,
            "converter_int8": lambda p: convert_tflite(model, spec, p, "int8",
                                                       representative=calibration),
            "aeq_static_wi8_ai8": lambda p: _aeq(float_path, p, "static_wi8_ai8", calibration),
            "converter_dynamic_int8": lambda p: convert_tflite(model, spec, p, "dynamic_int8"),
            "aeq_dynamic_wi8_afp32": lambda p: _aeq(float_path, p, "dynamic_wi8_afp32",
                                                    calibration),
        }
        runs = [(name, name) for name in variants] + [
            ("aeq_static_wi8_ai8_graph_output", "aeq_static_wi8_ai8")]
        for name, file_name in runs:
            quantize = variants.get(name)
            path = float_path if file_name == "float32" else os.path.join(
                folder, f"{file_name}.tflite")
            start = time.perf_counter()
            try:
                if quantize is not None:
                    quantize(path)
            except Exception as e:  # reported, the others go on
                rows[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
                continue
            seconds = time.perf_counter() - start
            if not os.path.isfile(path):
                continue
            runner = (_softmax_output_runner(path) if name.endswith("_graph_output")
                      else tflite_runner(path))
            result = measure(name, runner, images, labels, reference, min_agreement=0.0,
                             path=path)
            rows[name] = {"size_bytes": result.size_bytes, "gzip_bytes": result.gzip_bytes,
                          "top1": result.top1_accuracy,
                          "top1_drop_points": 100 * (keras_top1 - result.top1_accuracy),
                          "agreement": result.agreement, "max_prob_diff": result.max_prob_diff,
                          "latency_ms": result.latency_ms, "quantize_s": round(seconds, 2)}
    output = {"run": os.path.abspath(args.run), "split": split, "images": int(len(labels)),
              "calibration_images": int(len(calibration)), "variants": rows}
    print(json.dumps(output, indent=1))
    return output


if __name__ == "__main__":
    main(sys.argv[1:])
