"""TF Serving's `--batching_parameters_file` and `--monitoring_config_file` (text protos).

tensorflow-serving-api does not ship these two messages, so they are declared
here with TF Serving's field names and types (session_bundle_config.proto,
monitoring_config.proto) and parsed with protobuf's own text format parser.

```python
batching = read_batching_parameters("batching.txt")   # max_batch_size { value: 32 } ...
path = read_monitoring_config("monitoring.txt")       # "/monitoring/prometheus/metrics" or None
```
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto in the pool)

from vispipe.serving.config import BatchingConfig

__all__ = ["read_batching_parameters", "read_monitoring_config", "DEFAULT_PROMETHEUS_PATH"]

# tensorflow_serving/util/prometheus_exporter.cc kPrometheusPath
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_PACKAGE = "vispipe.tfserving_files"

_FIELDS = {
    "BatchingParameters": [
        ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", 6, "int64", True),
        ("pad_variable_length_inputs", 7, "bool", False),
    ],
    "PrometheusConfig": [("enable", 1, "bool", False), ("path", 2, "string", False)],
    "MonitoringConfig": [("prometheus_config", 1, f".{_PACKAGE}.PrometheusConfig", False)],
}
_SCALARS = {
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}


def _message_classes() -> dict[str, Any]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="vispipe/serving/tf_serving_files.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, fields in _FIELDS.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, kind, repeated in fields:
            field = message.field.add(name=name, number=number, json_name=name)
            field.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type = field.TYPE_MESSAGE
                field.type_name = kind
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file_proto.name)
    except KeyError:
        pool.Add(file_proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in _FIELDS
    }


_MESSAGES = _message_classes()


def _parse(path: str, message_name: str) -> Any:
    message = _MESSAGES[message_name]()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a TF Serving {message_name} text proto: {error}") from None
    return message


def read_batching_parameters(path: str, defaults: BatchingConfig = BatchingConfig()) -> BatchingConfig:
    """Batching settings from a TF Serving BatchingParameters file.

    `max_batch_size`, `batch_timeout_micros`, `max_enqueued_batches` (times
    max_batch_size gives the queued rows) and `num_batch_threads` are applied;
    `thread_pool_name`, `allowed_batch_sizes` and `pad_variable_length_inputs`
    are accepted and have no effect (answers do not depend on them).

    Args:
        path: the text proto file.
        defaults: values of the fields the file leaves out.

    Returns:
        The batching settings, enabled.

    Example:
    >>> read_batching_parameters("batching.txt").max_batch_size  # doctest: +SKIP
    32
    """
    proto = _parse(path, "BatchingParameters")
    max_batch_size = proto.max_batch_size.value if proto.HasField("max_batch_size") else defaults.max_batch_size
    timeout_ms = (
        proto.batch_timeout_micros.value / 1000.0 if proto.HasField("batch_timeout_micros") else defaults.batch_timeout_ms
    )
    max_queued = (
        proto.max_enqueued_batches.value * max_batch_size if proto.HasField("max_enqueued_batches") else defaults.max_queued
    )
    threads = proto.num_batch_threads.value if proto.HasField("num_batch_threads") else defaults.num_batch_threads
    try:
        return BatchingConfig(True, int(max_batch_size), float(timeout_ms), int(max_queued), int(threads))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_monitoring_config(path: str) -> str | None:
    """The Prometheus path a TF Serving MonitoringConfig file enables, or None.

    Example:
    >>> read_monitoring_config("monitoring.txt")  # doctest: +SKIP
    '/monitoring/prometheus/metrics'
    """
    proto = _parse(path, "MonitoringConfig")
    if not proto.prometheus_config.enable:
        return None
    path_value = proto.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
    if not path_value.startswith("/"):
        raise ValueError(f"{path}: prometheus_config.path must start with '/', got {path_value!r}")
    return path_value
