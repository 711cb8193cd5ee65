"""Conversions between tensorflow_serving.apis protos and numpy arrays, as TF Serving makes them.

Declared tensor shapes are checked against `--max_tensor_elements` before any
array is allocated: a 51-byte PredictRequest declaring [1, 20000, 20000, 1]
(which TensorFlow would fill with zeros) is refused with INVALID_ARGUMENT.

```python
inputs = arrays_from_tensor_protos(request.inputs, max_elements=1 << 24)
tensor_protos_from_arrays(outputs, response.outputs)    # typed *_val fields, like Tensor::AsProtoField
serialized = serialized_examples(request.input)         # context + example, like TF Serving
```
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from vispipe.serving.errors import ServingError

__all__ = [
    "arrays_from_tensor_protos",
    "tensor_proto_from_array",
    "tensor_protos_from_arrays",
    "serialized_examples",
    "warmup_requests",
]

# Tensor::AsProtoField's typed value field per dtype (half types hold their bits in half_val).
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
}


def _bad(name: str, detail: str) -> ServingError:
    # TF Serving's text for a TensorProto that Tensor::FromProto rejects, then why.
    return ServingError("INVALID_ARGUMENT", f"tensor parsing error: {name} ({detail})")


def _declared_elements(name: str, proto: Any) -> int:
    if proto.tensor_shape.unknown_rank:
        raise _bad(name, "a request tensor needs a known shape")
    sizes = [d.size for d in proto.tensor_shape.dim]
    if any(size < 0 for size in sizes):
        raise _bad(name, f"negative dimension in shape {sizes}")
    elements = 1
    for size in sizes:
        elements *= size
    return elements


def _array(name: str, proto: Any, elements: int) -> np.ndarray:
    if proto.dtype not in _VALUE_FIELDS:
        raise _bad(name, f"dtype {types_pb2.DataType.Name(proto.dtype)} is not supported")
    if proto.tensor_content:
        itemsize = tf.dtypes.as_dtype(proto.dtype).size
        if proto.dtype == types_pb2.DT_STRING or len(proto.tensor_content) != elements * itemsize:
            raise _bad(name, f"tensor_content holds {len(proto.tensor_content)} bytes, the shape needs {elements * itemsize}")
    else:
        given = len(getattr(proto, _VALUE_FIELDS[proto.dtype]))
        if given > elements:
            raise _bad(name, f"{given} values for a shape of {elements} elements")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError) as error:
        raise _bad(name, str(error).split("\n")[0]) from None


def arrays_from_tensor_protos(tensors: Mapping[str, Any], max_elements: int) -> dict[str, np.ndarray]:
    """TensorProto map (PredictRequest.inputs) -> name -> numpy array, sizes checked first.

    Args:
        tensors: input alias -> TensorProto.
        max_elements: most elements all the tensors together may declare.

    Raises:
        ServingError: INVALID_ARGUMENT for a malformed TensorProto or one over the limit.

    Example:
    >>> arrays_from_tensor_protos({"x": tf.make_tensor_proto([1.0, 2.0])}, 16)["x"].tolist()
    [1.0, 2.0]
    """
    declared = {name: _declared_elements(name, proto) for name, proto in tensors.items()}
    total = sum(declared.values())
    if total > max_elements:
        shapes = {name: [d.size for d in proto.tensor_shape.dim] for name, proto in tensors.items()}
        raise ServingError(
            "INVALID_ARGUMENT",
            f"the input tensors declare {total} elements (shapes {shapes}); this server takes at most "
            f"{max_elements} per request (--max_tensor_elements)",
        )
    return {name: _array(name, proto, declared[name]) for name, proto in tensors.items()}


def tensor_proto_from_array(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with typed value fields (`float_val`, `string_val`, ...), as TF Serving answers.

    Example:
    >>> list(tensor_proto_from_array(np.array([0.5], np.float32)).float_val)
    [0.5]
    """
    array = np.asarray(array)
    dtype = tf.string if array.dtype.kind in "OSU" else tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if dtype == tf.string:
        values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat.tolist()]
    elif dtype in (tf.float16, tf.bfloat16):
        values = flat.view(np.uint16).tolist()
    else:
        values = flat.tolist()
    getattr(proto, _VALUE_FIELDS[dtype.as_datatype_enum]).extend(values)
    return proto


def tensor_protos_from_arrays(arrays: Mapping[str, np.ndarray], target: Any) -> None:
    """Fills a TensorProto map (PredictResponse.outputs) from numpy arrays."""
    for name, array in arrays.items():
        target[name].CopyFrom(tensor_proto_from_array(array))


def serialized_examples(input_proto: Any) -> np.ndarray:
    """Serialized tf.Examples of an Input proto, as TF Serving feeds them to a signature.

    With `example_list_with_context`, each value is the serialized context followed by
    the serialized example, which parses as the two merged (the example's features win).

    Returns:
        A 1-D object array of serialized tf.Example protos.

    Raises:
        ServingError: INVALID_ARGUMENT "Input is empty." when there are no examples.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        values = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        values = [context + e.SerializeToString() for e in with_context.examples]
    else:
        values = []
    if not values:
        raise ServingError("INVALID_ARGUMENT", "Input is empty.")
    return np.array(values, dtype=object)


def warmup_requests(path: str) -> Iterable[Any]:
    """PredictionLog protos of a TF Serving warm-up file (a TFRecord file).

    Example:
    >>> for log in warmup_requests("1/assets.extra/tf_serving_warmup_requests"):  # doctest: +SKIP
    ...     print(log.WhichOneof("log_type"))
    predict_log
    """
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        yield log
