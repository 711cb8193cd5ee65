"""One error type for the server, mapped to TF Serving's HTTP and gRPC status codes.

```python
raise ServingError("NOT_FOUND", "Servable not found for request: Latest(lenet)")
```
"""

from __future__ import annotations

import grpc

__all__ = ["ServingError", "http_status", "grpc_status", "status_name", "status_number"]

# tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode, plus 413/415 for
# the body and upload checks TF Serving does not have.
_HTTP = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# tensorflow/core/protobuf/error_codes.proto (the same numbers as gRPC's status codes).
_CODE_NAMES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
_GRPC_ALIASES = {"PAYLOAD_TOO_LARGE": "RESOURCE_EXHAUSTED", "UNSUPPORTED_MEDIA_TYPE": "INVALID_ARGUMENT"}


class ServingError(Exception):
    """A request the server refuses, with a status code name and a message for the client.

    Args:
        code: a gRPC status code name ("INVALID_ARGUMENT", "NOT_FOUND", ...) or
            "PAYLOAD_TOO_LARGE" / "UNSUPPORTED_MEDIA_TYPE".
        message: what was expected and what was got; sent to the client as is.
    """

    def __init__(self, code: str, message: str):
        if code not in _HTTP:
            raise ValueError(f"unknown status code name {code!r}; expected one of {sorted(_HTTP)}")
        super().__init__(message)
        self.code = code
        self.message = message


def http_status(code: str) -> int:
    """The HTTP status TF Serving answers for a status code name.

    Example:
    >>> http_status("NOT_FOUND")
    404
    """
    return _HTTP[code]


def grpc_status(code: str) -> grpc.StatusCode:
    """The gRPC status code for a status code name.

    Example:
    >>> grpc_status("INVALID_ARGUMENT").name
    'INVALID_ARGUMENT'
    """
    return grpc.StatusCode[_GRPC_ALIASES.get(code, code)]


def status_name(code: int) -> str:
    """The status code name of a TensorFlow / gRPC error number (UNKNOWN for others).

    Example:
    >>> status_name(3)
    'INVALID_ARGUMENT'
    """
    return _CODE_NAMES.get(code, "UNKNOWN")


def status_number(name: str) -> int:
    """The error number of a status code name (0 for "OK"); the inverse of `status_name`.

    Example:
    >>> status_number("NOT_FOUND")
    5
    """
    return 0 if name == "OK" else next((n for n, known in _CODE_NAMES.items() if known == name), 2)
