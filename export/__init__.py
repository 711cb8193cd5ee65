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

# Light (no TensorFlow): the CLI lists the formats and options without the converters.
from vispipe.export.options import FORMAT_VARIANTS, FORMATS, INTEROP_FORMATS, ExportOptions

__all__ = ["FORMATS", "FORMAT_VARIANTS", "INTEROP_FORMATS", "ExportOptions", "export_model"]


def __getattr__(name: str):
    # TensorFlow and the converters load only when an export runs.
    if name == "export_model":
        from vispipe.export.api import export_model

        return export_model
    raise AttributeError(f"module 'vispipe.export' has no attribute {name!r}")
