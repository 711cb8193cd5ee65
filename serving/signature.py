"""What a served signature takes and returns, read from its SignatureDef.

Imports nothing else from vispipe.serving, so every other module can use it.

```python
info = SignatureInfo.from_signature_def("serving_default", meta_graph.signature_def["serving_default"])
info.inputs["x"].dtype, info.method_name
```
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "SignatureInfo",
    "InputCheck",
    "DEFAULT_SIGNATURE",
    "PREDICT_METHOD",
    "CLASSIFY_METHOD",
    "REGRESS_METHOD",
    "CLASSIFY_INPUTS",
    "CLASSIFY_CLASSES",
    "CLASSIFY_SCORES",
    "REGRESS_INPUTS",
    "REGRESS_OUTPUTS",
]

# tensorflow/cc/saved_model/signature_constants.h
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def _spec(tensor_info: Any) -> tf.TensorSpec:
    shape = tf.TensorShape(None) if tensor_info.tensor_shape.unknown_rank else tf.TensorShape(
        [d.size if d.size >= 0 else None for d in tensor_info.tensor_shape.dim]
    )
    return tf.TensorSpec(shape, tf.dtypes.as_dtype(tensor_info.dtype))


@dataclasses.dataclass(frozen=True)
class InputCheck:
    """An input's dtype and shape in numpy's terms, worked out once per signature rather than per request.

    Args:
        dtype: the numpy dtype, None for DT_STRING.
        dims: the sizes (None where any size goes), None when any rank goes.
    """

    dtype: np.dtype | None
    dims: tuple[int | None, ...] | None

    @classmethod
    def of(cls, spec: tf.TensorSpec) -> "InputCheck":
        """The check of one signature input.

        Example:
        >>> InputCheck.of(tf.TensorSpec([None, 28, 28, 1], tf.uint8))
        InputCheck(dtype=dtype('uint8'), dims=(None, 28, 28, 1))
        """
        dtype = None if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)
        return cls(dtype, None if spec.shape.rank is None else tuple(spec.shape.as_list()))

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of `shape` is compatible with the input's shape (TensorShape.is_compatible_with)."""
        if self.dims is None:
            return True
        return len(shape) == len(self.dims) and all(d is None or d == n for d, n in zip(self.dims, shape))


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """A signature's inputs, outputs and method, keyed by their aliases.

    Args:
        name: the signature key ("serving_default", "classify").
        inputs: input alias -> dtype and (possibly partial) shape.
        outputs: output alias -> dtype and shape.
        method_name: "tensorflow/serving/predict", ".../classify" or ".../regress".
        input_tensors: input alias -> graph tensor name ("x:0"); TF Serving's
            multi-inference needs every task to read the same tensor.
        output_tensors: output alias -> graph tensor name.
    """

    name: str
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]
    method_name: str
    input_tensors: dict[str, str] = dataclasses.field(default_factory=dict)
    output_tensors: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_signature_def(cls, name: str, signature_def: Any) -> "SignatureInfo":
        """Builds the info of one `tensorflow.SignatureDef` proto.

        Example:
        >>> from tensorflow.core.protobuf import meta_graph_pb2
        >>> sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        >>> sig.inputs["x"].dtype = 1
        >>> SignatureInfo.from_signature_def("serving_default", sig).inputs["x"].dtype.name
        'float32'
        """
        return cls(
            name=name,
            inputs={k: _spec(v) for k, v in signature_def.inputs.items()},
            outputs={k: _spec(v) for k, v in signature_def.outputs.items()},
            method_name=signature_def.method_name,
            input_tensors={k: v.name for k, v in signature_def.inputs.items()},
            output_tensors={k: v.name for k, v in signature_def.outputs.items()},
        )

    @functools.cached_property
    def input_checks(self) -> dict[str, InputCheck]:
        """Input alias -> its dtype and shape in numpy's terms."""
        return {name: InputCheck.of(spec) for name, spec in self.inputs.items()}
