"""One error type for the server, mapped to TF Serving's HTTP and gRPC status codes.

```python
raise ServingError("NOT_FOUND", "Servable not found for request: Latest(lenet)")
```
"""

from __future__ import annotations

import grpc

__all__ = ["ServingError", "http_status", "grpc_status"]

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
    "FAILED_PRECONDITION": 412,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
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
