"""TF Serving's REST JSON: predict bodies (row and columnar), tf.Example bodies, and answers.

Follows tensorflow_serving/util/json_tensor.cc: numbers are written as TF
Serving writes them (a float32 0.1 is `0.1`, whole numbers get `.0`, NaN and
Infinity are the bare tokens), binary strings as `{"b64": ...}`.

```python
arrays, row_format = decode_predict_json({"instances": [[1.0, 2.0]]}, signature, max_instances=64)
text = encode_predict_json(outputs, row_format)          # '{"predictions": [[3.0, 4.5]]}'
serialized = examples_from_json({"examples": [{"x": 1.0}]}, max_instances=64)
```
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import struct
from typing import Any, Callable, TypeVar

import numpy as np
import orjson
import tensorflow as tf

from vispipe.serving.errors import ServingError
from vispipe.serving.signature import InputCheck, SignatureInfo

__all__ = [
    "parse_json",
    "decode_predict_json",
    "encode_predict_json",
    "examples_from_json",
    "classification_json",
    "regression_json",
    "decimal_text",
]

Tensors = dict[str, np.ndarray]
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _bad(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


# -- numbers as TF Serving writes them ---------------------------------------------------


_FLOAT32 = struct.Struct("<f")


def decimal_text(value: float, single: bool = True) -> str:
    """One float as json_tensor.cc's WriteDecimal writes it.

    Six significant digits when they round-trip (as float32 for `single`), else full
    precision; `.0` on whole numbers; `NaN`, `Infinity`, `-Infinity` for non-finite values.

    Example:
    >>> decimal_text(float(np.float32(0.1))), decimal_text(3.0), decimal_text(1e-05)
    ('0.1', '3.0', '1e-05')
    """
    if not math.isfinite(value):
        return "NaN" if value != value else ("-Infinity" if value < 0 else "Infinity")
    text = "%.6g" % value
    back = float(text)
    if back != value:
        try:
            exact = single and _FLOAT32.unpack(_FLOAT32.pack(back))[0] == value
        except OverflowError:
            exact = False
        if not exact:
            text = ("%.9g" if single else "%.17g") % value
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _string_value(name: str, value: Any) -> Any:
    value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not name.endswith("_bytes"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text: sent as base64 rather than as invalid JSON
    return {"b64": base64.b64encode(value).decode("ascii")}


def _texts(name: str, array: np.ndarray) -> np.ndarray:
    """The JSON text of every element, same shape as `array`."""
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f":
        single = array.dtype.itemsize <= 4
        texts = [decimal_text(v, single) for v in flat.astype(np.float64).tolist()]
    elif kind == "b":
        texts = ["true" if v else "false" for v in flat.tolist()]
    elif kind in "iu":
        texts = [str(v) for v in flat.tolist()]
    else:
        texts = [json.dumps(_string_value(name, v), ensure_ascii=False) for v in flat.tolist()]
    return np.array(texts, dtype=object).reshape(array.shape)


def _nest(texts: Any) -> str:
    if not isinstance(texts, np.ndarray) or texts.ndim == 0:
        return str(texts)
    return "[" + ", ".join(_nest(t) for t in texts) + "]"


def encode_predict_json(outputs: Tensors, row_format: bool) -> str:
    """The predict answer: `predictions` (rows) or `outputs` (columns), as TF Serving writes it.

    With one output its name is left out. Row format needs every output to have
    the same first (batch) dimension.

    Raises:
        ServingError: INVALID_ARGUMENT for row format over outputs without a shared batch dimension.

    Example:
    >>> encode_predict_json({"y": np.array([2.5, 3.0], np.float32)}, row_format=True)
    '{"predictions": [2.5, 3.0]}'
    """
    texts = {name: _texts(name, np.asarray(array)) for name, array in outputs.items()}
    if not row_format:
        if len(texts) == 1:
            return '{"outputs": ' + _nest(next(iter(texts.values()))) + "}"
        return '{"outputs": {' + ", ".join(f"{json.dumps(k)}: {_nest(v)}" for k, v in texts.items()) + "}}"
    batch = None
    for name, value in texts.items():
        if value.ndim == 0:
            raise _bad(f"Tensor name: {name} has no shape information ")
        if batch is not None and value.shape[0] != batch:
            raise _bad(f"Tensor name: {name} has inconsistent batch size: {value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    if len(texts) == 1:
        rows = [_nest(row) for row in next(iter(texts.values()))]
    else:
        keys = {name: json.dumps(name) for name in texts}
        rows = ["{" + ", ".join(f"{keys[k]}: {_nest(v[i])}" for k, v in texts.items()) + "}" for i in range(batch)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


def classification_json(results: list[list[tuple[str, float]]]) -> str:
    """`{"results": [[[label, score], ...], ...]}` (json_tensor.cc MakeJsonFromClassificationResult)."""
    rows = [
        "[" + ", ".join(f"[{json.dumps(label, ensure_ascii=False)}, {decimal_text(score)}]" for label, score in row) + "]"
        for row in results
    ]
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_json(values: list[float]) -> str:
    """`{"results": [value, ...]}` (json_tensor.cc MakeJsonFromRegressionResult)."""
    return '{"results": [' + ", ".join(decimal_text(v) for v in values) + "]}"


# -- requests ----------------------------------------------------------------------------


_Decoder = TypeVar("_Decoder", bound=Callable[..., Any])


def _nesting_checked(decode: _Decoder) -> _Decoder:
    """`decode` with a RecursionError (a hostile body nested thousands deep) answered as a parse error.

    orjson parses any depth; what then walks the body recursively (base64
    values, the excerpt in an error message) runs out of stack instead.
    """

    @functools.wraps(decode)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return decode(*args, **kwargs)
        except RecursionError:
            raise _bad("JSON Parse error: the document is nested too deeply") from None

    return checked  # type: ignore[return-value]


def parse_json(raw: bytes) -> Any:
    """A request body, parsed by orjson (about twice as fast as `json.loads` on an image's numbers).

    What orjson refuses (the NaN and Infinity tokens TF Serving accepts, numbers
    past the double range, lone surrogates, UTF-16) is parsed by `json.loads`,
    which also words the error. An integer past 2**64 is read as a double, as
    TF Serving's RapidJSON reads it.

    Raises:
        ServingError: INVALID_ARGUMENT for an empty or malformed body.

    Example:
    >>> parse_json(b'{"instances": [[1, 2.5]]}')
    {'instances': [[1, 2.5]]}
    """
    if not raw:
        raise _bad("JSON Parse error: The document is empty")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # the stdlib decides, and says what is wrong
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise _bad(f"JSON Parse error: {str(error)[:200]}") from None


def _unb64(value: Any) -> Any:
    """Replaces {"b64": "..."} objects by bytes and str by utf-8 bytes, recursively."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _bad(f"JSON Value: {json.dumps(value)[:200]} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad("Unable to base64 decode") from None
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _has_strings(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (dict, str))


def _to_array(name: str, value: Any, spec: tf.TensorSpec, check: InputCheck) -> np.ndarray:
    if check.dtype is None:
        try:
            array = np.array(_unb64(value), dtype=object)
        except ValueError:
            raise _bad(f"input {name!r}: expected a rectangular list of strings, got ragged lists") from None
        if any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise _bad(f"input {name!r}: expected strings or {{\"b64\": ...}} values for a DT_STRING tensor")
        return array
    if _has_strings(value):
        raise _bad(f"input {name!r}: expected numbers for a {spec.dtype.name} tensor, got strings")
    try:
        array = np.asarray(value, dtype=check.dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise _bad(
            f"input {name!r}: expected a rectangular list of {spec.dtype.name} values, got {error}".split("\n")[0]
        ) from None
    if spec.dtype.is_floating and np.isinf(array).any() and not np.isinf(np.asarray(value, dtype=np.float64)).any():
        raise _bad(f"Cannot convert JSON value of input {name!r} to {spec.dtype.name} without loss of precision.")
    return array


def _row_columns(instances: list, sig: SignatureInfo) -> dict[str, list]:
    names = sorted(sig.inputs)
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(names) > 1:
            raise _bad(
                "instances is a plain list, but expecting list of objects as multiple input tensors "
                f"required as per tensorinfo_map (signature {sig.name!r} takes {names})"
            )
        if any(isinstance(i, dict) and not _is_b64(i) for i in instances):
            raise _bad("Expecting value/list but got object in the 'instances' list")
        return {names[0]: instances}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance):
            raise _bad(f"Expecting object but got list at item {index} of input list")
        if sorted(instance) != names:
            raise _bad(
                f"Failed to process element: {index} of 'instances' list. JSON object keys "
                f"{sorted(instance)} must be equal to: {','.join(names)}"
            )
    return {name: [i[name] for i in instances] for name in names}


def _columnar(inputs: Any, sig: SignatureInfo) -> dict[str, Any]:
    names = sorted(sig.inputs)
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise _bad(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                f"required as per tensorinfo_map (signature {sig.name!r} takes {names})"
            )
        return {names[0]: inputs}
    missing = [name for name in names if name not in inputs]
    if missing:
        raise _bad(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {name: inputs[name] for name in names}


@_nesting_checked
def decode_predict_json(body: Any, sig: SignatureInfo, max_instances: int) -> tuple[Tensors, bool]:
    """Decodes a REST predict body in row (`instances`) or columnar (`inputs`) format.

    Args:
        body: the parsed JSON body.
        sig: the signature called (gives input names and dtypes).
        max_instances: most rows allowed.

    Returns:
        (input alias -> array, True for the row format).

    Example:
    >>> decode_predict_json({"instances": [[0, 1]]}, sig, 16)  # doctest: +SKIP
    ({'x': array([[0., 1.]], dtype=float32)}, True)
    """
    if not isinstance(body, dict):
        raise _bad(f"JSON Value: {json.dumps(body)[:100]} Is not object")
    if "instances" in body and "inputs" in body:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise _bad("Excepting 'instances' to be an list/array")
        if not instances:
            raise _bad("No values in 'instances' array")
        if len(instances) > max_instances:
            raise _bad(f"'instances' holds {len(instances)} rows; this server takes at most {max_instances}")
        columns = _row_columns(instances, sig)
    elif "inputs" in body:
        columns = _columnar(body["inputs"], sig)
    else:
        raise _bad("Missing 'inputs' or 'instances' key")
    arrays = {name: _to_array(name, value, sig.inputs[name], sig.input_checks[name]) for name, value in columns.items()}
    for name, array in arrays.items():
        if array.ndim and array.shape[0] > max_instances:
            raise _bad(f"input {name!r} holds {array.shape[0]} rows; this server takes at most {max_instances}")
    return arrays, "instances" in body


def _feature(name: str, value: Any) -> tf.train.Feature:
    """One JSON feature value (or flat list) as json_tensor.cc's AddValueToFeature makes it."""
    kinds = set()
    values = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool) or isinstance(item, int):
            kinds.add("int64")
            values.append(int(item))
        elif isinstance(item, float):
            if math.isfinite(item) and abs(item) > _FLOAT32_MAX:
                raise _bad(f"Cannot convert JSON value: {item} to float without loss of precision.")
            kinds.add("float")
            values.append(item)
        elif isinstance(item, str) or _is_b64(item):
            kinds.add("bytes")
            values.append(_unb64(item))
        else:
            raise _bad(f"Feature: {name} has element with unexpected JSON type: {type(item).__name__}")
    if len(kinds) > 1:
        raise _bad(f"Unexpected element type in feature: {name} expecting type: {sorted(kinds)[0]}")
    kind = kinds.pop() if kinds else "bytes"
    try:
        if kind == "int64":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        if kind == "float":
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    except ValueError:
        raise _bad(f"Feature: {name} has an integer out of the int64 range") from None
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _example(value: Any) -> bytes:
    if not isinstance(value, dict):
        raise _bad(f"Example must be JSON object but got JSON {type(value).__name__}")
    features = {name: _feature(name, v) for name, v in value.items()}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


@_nesting_checked
def examples_from_json(body: Any, max_instances: int) -> np.ndarray:
    """The serialized tf.Examples of a REST classify/regress body, fed as TF Serving feeds them.

    A `context` is serialized in front of each example (so its features merge in,
    the example's winning), as TF Serving does with `example_list_with_context`.

    Returns:
        A 1-D object array of serialized tf.Example protos.

    Example:
    >>> len(examples_from_json({"examples": [{"x": 1.0}, {"x": 2.0}]}, 16))
    2
    """
    if not isinstance(body, dict):
        raise _bad(f"JSON Value: {json.dumps(body)[:100]} Is not object")
    if "examples" not in body:
        raise _bad("When method is classify, key 'examples' is expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise _bad("Expecting 'examples' value to be an list/array")
    if not examples:
        raise _bad("'examples' value is an empty array")
    if len(examples) > max_instances:
        raise _bad(f"'examples' holds {len(examples)} entries; this server takes at most {max_instances}")
    context = _example(body["context"]) if "context" in body else b""
    return np.array([context + _example(e) for e in examples], dtype=object)
