"""TF Serving request/response encodings: REST JSON (row and columnar) and tf.Example.

```python
inputs, row_format = decode_predict_json({"instances": [[1.0, 2.0]]}, signature, max_instances=64)
body = encode_predict_json(outputs, row_format)
```
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import tensorflow as tf

from vispipe.serving.errors import ServingError
from vispipe.serving.servable import SignatureInfo

__all__ = [
    "check_inputs",
    "decode_predict_json",
    "encode_predict_json",
    "examples_from_json",
    "classification_results",
]

Tensors = dict[str, np.ndarray]


def _bad(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def _unb64(value: Any) -> Any:
    """Replaces {"b64": "..."} objects by bytes and str by utf-8 bytes, recursively."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _bad(f'expected a binary value as {{"b64": "<base64 string>"}}, got an object with keys {sorted(value)}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad("invalid base64 in a {\"b64\": ...} value") from None
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _has_b64(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (dict, str))


def _to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    if spec.dtype == tf.string:
        try:
            array = np.array(_unb64(value), dtype=object)
        except ValueError:
            raise _bad(f"input {name!r}: expected a rectangular list of strings, got ragged lists") from None
        if any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise _bad(f"input {name!r}: expected strings or {{\"b64\": ...}} values for a DT_STRING tensor")
        return array
    if _has_b64(value):
        raise _bad(f"input {name!r}: expected numbers for a {spec.dtype.name} tensor, got strings")
    try:
        array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise _bad(
            f"input {name!r}: expected a rectangular list of {spec.dtype.name} values, got {error}".split("\n")[0]
        ) from None
    return array


def check_inputs(sig: SignatureInfo, inputs: Tensors) -> Tensors:
    """Checks names, dtypes and shapes of `inputs` against the signature; casts dtypes.

    Args:
        sig: the signature called.
        inputs: input name -> array (from JSON or TensorProtos).

    Returns:
        The inputs cast to the signature's dtypes.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input, the expected and the received.
    """
    missing = sorted(set(sig.inputs) - set(inputs))
    extra = sorted(set(inputs) - set(sig.inputs))
    if missing or extra:
        raise _bad(
            f"signature {sig.name!r} takes inputs {sorted(sig.inputs)}; "
            f"missing {missing}, unexpected {extra}"
        )
    checked = {}
    for name, array in inputs.items():
        spec = sig.inputs[name]
        if spec.dtype == tf.string:
            if array.dtype != object and array.dtype.kind not in "SU":
                raise _bad(f"input {name!r}: expected DT_STRING values, got {array.dtype}")
            array = np.asarray(array, dtype=object)
        elif array.dtype != spec.dtype.as_numpy_dtype:
            if array.dtype == object or array.dtype.kind in "SUV":
                raise _bad(f"input {name!r}: expected {spec.dtype.name} values, got {array.dtype}")
            array = array.astype(spec.dtype.as_numpy_dtype)
        if not spec.shape.is_compatible_with(array.shape):
            raise _bad(f"input {name!r}: expected shape {spec.shape.as_list()}, got {list(array.shape)}")
        if array.ndim and array.shape[0] == 0:
            raise _bad(f"input {name!r}: expected at least one instance, got an empty batch")
        checked[name] = array
    return checked


def decode_predict_json(body: Any, sig: SignatureInfo, max_instances: int) -> tuple[Tensors, bool]:
    """Decodes a REST predict body in row (`instances`) or columnar (`inputs`) format.

    Args:
        body: the parsed JSON body.
        sig: the signature called (gives input names and dtypes).
        max_instances: most rows allowed.

    Returns:
        (input name -> array, True for the row format).

    Example:
    >>> decode_predict_json({"instances": [[0, 1]]}, sig, 16)  # doctest: +SKIP
    ({'x': array([[0, 1]])}, True)
    """
    if not isinstance(body, dict):
        raise _bad(f"expected a JSON object with 'instances' or 'inputs', got {type(body).__name__}")
    if ("instances" in body) == ("inputs" in body):
        raise _bad("JSON object: expected exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    names = sorted(sig.inputs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise _bad("'instances' must be a non-empty list")
        if len(instances) > max_instances:
            raise _bad(f"'instances' holds {len(instances)} rows; this server takes at most {max_instances}")
        named = all(isinstance(i, dict) and "b64" not in i for i in instances)
        if len(names) > 1 and not named:
            raise _bad(f"signature {sig.name!r} has several inputs {names}: each instance must be an object naming them")
        if named:
            keys = {tuple(sorted(i)) for i in instances}
            if len(keys) != 1:
                raise _bad("all instances must name the same inputs")
            columns = {k: [i[k] for i in instances] for k in keys.pop()}
        else:
            columns = {names[0]: instances}
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and "b64" not in inputs:
            columns = inputs
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise _bad(f"signature {sig.name!r} has several inputs {names}: 'inputs' must be an object naming them")
    arrays = {}
    for name, value in columns.items():
        if name not in sig.inputs:
            raise _bad(f"signature {sig.name!r} has no input {name!r}; its inputs are {names}")
        arrays[name] = _to_array(name, value, sig.inputs[name])
        if arrays[name].ndim and arrays[name].shape[0] > max_instances:
            raise _bad(f"input {name!r} holds {arrays[name].shape[0]} rows; this server takes at most {max_instances}")
    return check_inputs(sig, arrays), "instances" in body


def _jsonable(name: str, array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        flat = []
        for value in array.reshape(-1):
            if name.endswith("_bytes"):
                flat.append({"b64": base64.b64encode(value).decode("ascii")})
            else:
                try:
                    flat.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    flat.append({"b64": base64.b64encode(value).decode("ascii")})
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def encode_predict_json(outputs: Tensors, row_format: bool) -> dict[str, Any]:
    """Encodes outputs as TF Serving does: `predictions` (rows) or `outputs` (columns).

    With one output its name is left out; string outputs are text, or {"b64": ...}
    when the output name ends in `_bytes` or the bytes are not UTF-8.

    Example:
    >>> encode_predict_json({"y": np.array([[0.5]])}, row_format=True)
    {'predictions': [[0.5]]}
    """
    values = {name: _jsonable(name, array) for name, array in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = len(next(iter(values.values())))
    return {"predictions": [{name: value[i] for name, value in values.items()} for i in range(rows)]}


def _feature(name: str, value: Any) -> tf.train.Feature:
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, (dict, str)) for v in items):
        raw = _unb64(items)
        if not all(isinstance(v, bytes) for v in raw):
            raise _bad(f"feature {name!r}: expected all strings, got a mix of strings and other values")
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=raw))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise _bad(f"feature {name!r}: expected numbers, strings or {{\"b64\": ...}} (or a flat list of them), got {value!r}"[:300])
    if all(isinstance(v, int) for v in items):
        try:
            return tf.train.Feature(int64_list=tf.train.Int64List(value=items))
        except ValueError:
            raise _bad(f"feature {name!r}: integer out of int64 range") from None
    return tf.train.Feature(float_list=tf.train.FloatList(value=items))


def examples_from_json(body: Any, max_instances: int) -> np.ndarray:
    """Serializes the `examples` (merged with `context`) of a REST classify body as tf.Examples.

    Returns:
        A 1-D object array of serialized tf.Example protos.
    """
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise _bad("expected a JSON object with a non-empty 'examples' list")
    examples = body["examples"]
    if len(examples) > max_instances:
        raise _bad(f"'examples' holds {len(examples)} entries; this server takes at most {max_instances}")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise _bad(f"'context' must be an object, got {type(context).__name__}")
    serialized = []
    for example in examples:
        if not isinstance(example, dict):
            raise _bad(f"each example must be an object of feature name -> value, got {type(example).__name__}")
        features = {name: _feature(name, value) for name, value in {**context, **example}.items()}
        serialized.append(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    return np.array(serialized, dtype=object)


def classification_results(outputs: Tensors) -> list[list[tuple[str, float]]]:
    """Pairs `classes` and `scores` outputs per example: [[(label, score), ...], ...]."""
    scores = outputs.get("scores")
    classes = outputs.get("classes")
    if scores is None and classes is None:
        raise ServingError(
            "FAILED_PRECONDITION",
            f"a classification signature must output 'classes' and/or 'scores', got {sorted(outputs)}",
        )
    reference = scores if scores is not None else classes
    reference = reference.reshape(reference.shape[0], -1)
    results = []
    for i in range(reference.shape[0]):
        row = []
        for j in range(reference.shape[1]):
            label = classes.reshape(reference.shape)[i, j] if classes is not None else b""
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            score = float(scores.reshape(reference.shape)[i, j]) if scores is not None else 0.0
            row.append((label, score))
        results.append(row)
    return results
