"""Protos printed as JSON the way TF Serving's REST API prints them.

TF Serving calls protobuf's C++ `MessageToJsonString` with `add_whitespace`,
`always_print_primitive_fields` and `preserve_proto_field_names`
(model_servers/http_rest_api_util.cc): fields with default values are printed
(`"name": ""`, `"unknown_rank": false`, `"defaults": {}`), fields in a declared
order with the set member of a oneof last, 64-bit integers as strings, and the
metadata answer is stitched together from the model spec and the unpacked
SignatureDefMap. This module prints the same text (map keys sorted).

```python
text = metadata_json(get_model_metadata_response)
text = proto_json(get_model_status_response)
```
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from tensorflow_serving.apis import get_model_metadata_pb2

__all__ = ["proto_json", "proto_dict", "metadata_json"]

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_WRAPPERS = {"google.protobuf.Int64Value", "google.protobuf.UInt64Value", "google.protobuf.Int32Value",
             "google.protobuf.UInt32Value", "google.protobuf.FloatValue", "google.protobuf.DoubleValue",
             "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue"}


def _shortest_float(value: float) -> float:
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", candidate))[0] == value:
            return candidate
    return value


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64:
        return str(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return _shortest_float(value) if field.type == FieldDescriptor.TYPE_FLOAT else value
    return value


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return _scalar(field, value)
    if field.message_type.full_name in _WRAPPERS:
        return _scalar(field.message_type.fields_by_name["value"], value.value)
    return proto_dict(value)


def proto_dict(message: Any) -> dict[str, Any]:
    """The message as an ordered dict, with TF Serving's JSON field order and defaults.

    Example:
    >>> from tensorflow_serving.apis import model_pb2
    >>> spec = model_pb2.ModelSpec(name="m")
    >>> spec.version.value = 3
    >>> proto_dict(spec)
    {'name': 'm', 'signature_name': '', 'version': '3'}
    """
    fields = message.DESCRIPTOR.fields
    regular = [f for f in fields if f.containing_oneof is None]
    chosen = sorted((f for f in fields if f.containing_oneof is not None and message.HasField(f.name)),
                    key=lambda f: f.number)
    data: dict[str, Any] = {}
    for field in regular + chosen:
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[field.name] = {str(k): _value(value_field, value[k]) for k in sorted(value)}
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            data[field.name] = [_value(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            continue  # an unset message field is not printed
        else:
            data[field.name] = _value(field, value)
    return data


def proto_json(message: Any) -> str:
    """The JSON text protobuf's C++ printer writes with TF Serving's options (one-space indent).

    Example:
    >>> print(proto_json(get_model_metadata_pb2.SignatureDefMap()), end="")
    {
     "signature_def": {}
    }
    """
    return json.dumps(proto_dict(message), indent=1, ensure_ascii=False) + "\n"


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> str:
    """The REST metadata answer, assembled as http_rest_api_util.cc ToJsonString does."""
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_def_map)
    return (
        "{\n"
        + '"model_spec":' + proto_json(response.model_spec) + ",\n"
        + '"metadata": {' + '"signature_def": ' + proto_json(signature_def_map) + "}\n"
        + "}\n"
    )
