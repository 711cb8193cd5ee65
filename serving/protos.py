"""Conversions between tensorflow_serving.apis protos and numpy arrays.

```python
inputs = arrays_from_tensor_protos(request.inputs)
serialized = examples_from_input(request.input)
```
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf

from vispipe.serving.errors import ServingError

__all__ = ["arrays_from_tensor_protos", "tensor_protos_from_arrays", "examples_from_input", "warmup_requests"]


def arrays_from_tensor_protos(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """TensorProto map (PredictRequest.inputs) -> name -> numpy array.

    Raises:
        ServingError: INVALID_ARGUMENT when a TensorProto is malformed.
    """
    arrays = {}
    for name, proto in tensors.items():
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError, KeyError) as error:
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: malformed TensorProto ({error})") from None
    return arrays


def tensor_protos_from_arrays(arrays: Mapping[str, np.ndarray], target: Any) -> None:
    """Fills a TensorProto map (PredictResponse.outputs) from numpy arrays."""
    for name, array in arrays.items():
        target[name].CopyFrom(tf.make_tensor_proto(array))


def examples_from_input(input_proto: Any) -> np.ndarray:
    """Serialized tf.Examples of an Input proto (example_list, or example_list_with_context merged).

    Returns:
        A 1-D object array of serialized tf.Example protos.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = list(input_proto.example_list.examples)
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        examples = []
        for example in with_context.examples:
            merged = tf.train.Example()
            merged.CopyFrom(with_context.context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        raise ServingError("INVALID_ARGUMENT", "Input is empty: expected example_list or example_list_with_context")
    if not examples:
        raise ServingError("INVALID_ARGUMENT", "Input is empty: expected at least one example")
    return np.array([e.SerializeToString() for e in examples], dtype=object)


def warmup_requests(path: str) -> Iterable[Any]:
    """PredictionLog protos of a TF Serving warm-up file (a TFRecord file).

    Example:
    >>> for log in warmup_requests("1/assets.extra/tf_serving_warmup_requests"):  # doctest: +SKIP
    ...     print(log.WhichOneof("log_type"))
    predict_log
    """
    from tensorflow_serving.apis import prediction_log_pb2

    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        yield log
