"""Export stage: a trained run to SavedModel (TF Serving), TFLite, pruned TFLite, CoreML, TF.js,
ONNX and OpenVINO.

Every artifact keeps one contract (`vispipe.export.contract`): uint8 pixels in, the
run's resize and normalization inside, probabilities and top labels out,
with the labels and preprocessing beside it. Each is then run by its own
runtime and compared with the Keras model (`vispipe.export.verify`).

Example:

```python
from vispipe.export import export_model
report = export_model("runs/mnist", "exports/mnist")
print(report["markdown"])
```
"""

from __future__ import annotations

__all__ = ["FORMATS", "FORMAT_VARIANTS", "INTEROP_FORMATS", "ExportOptions", "export_model"]

# Here, not in `vispipe.export.api`, so the CLI can list them without loading TensorFlow.
FORMATS = ("savedmodel", "tflite", "pruned", "coreml", "tfjs", "onnx", "openvino")
# Formats whose variants can also be asked for alone, e.g. "onnx_int8".
FORMAT_VARIANTS = {"onnx": ("float32", "float16", "int8"),
                   "openvino": ("float32", "float16", "int8")}
# Formats from the optional `interop` extra, with the modules they need; the
# default export includes them only when those are installed.
INTEROP_FORMATS = {"onnx": ("tf2onnx", "onnxruntime"), "openvino": ("openvino", "nncf")}


def __getattr__(name: str):
    # TensorFlow and the converters load only when an export runs.
    if name in ("ExportOptions", "export_model"):
        from vispipe.export import api

        return getattr(api, name)
    raise AttributeError(f"module 'vispipe.export' has no attribute {name!r}")
