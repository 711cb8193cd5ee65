"""The REST API's shared request steps, and a raw ASGI route for `:predict`, the server's hot path.

`answer` runs one API call on the version a URL names, maps errors to TF
Serving's statuses and counts the request; `predict_json` is the Predict API
from body bytes to answer text. FastAPI's handlers (vispipe.serving.rest) and
`PredictRoute` both use them, so a request gets the same answer either way.

`PredictRoute` sits in front of the FastAPI app and answers
`POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict` itself: on a
28x28 LeNet request FastAPI's exception middleware, router, dependency solving
and Response objects cost about as much CPU as the whole Predict call. Any
other request, and any predict URL it does not parse cleanly (TF Serving's
"Malformed request" cases), goes to the FastAPI app unchanged.

```python
app.add_middleware(PredictRoute, store=store, metrics=metrics, limits=config.limits)
status, text = await answer(store, metrics, Target("lenet"), "predict", lambda s: predict_json(s, raw, limits))
```
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Any, Awaitable, Callable

import numpy as np

from vispipe.serving import codec, inference
from vispipe.serving.config import LimitsConfig
from vispipe.serving.errors import ServingError, http_status
from vispipe.serving.futures import await_result
from vispipe.serving.metrics import ServingMetrics
from vispipe.serving.middleware import Receive, Scope, Send
from vispipe.serving.model_store import ModelStore
from vispipe.serving.servable import Servable

__all__ = ["Target", "PredictRoute", "INTERNAL_ERROR", "answer", "error_json", "predict_json", "run_plan", "signature_name"]

log = logging.getLogger("serving")

INTERNAL_ERROR = '{"error": "internal server error"}'
_JSON_HEADER = (b"content-type", b"application/json")
# The three URL forms, with the names, versions and labels FastAPI's handlers accept as they are;
# anything else (a ':' in a name, a version that is no int64) is theirs to refuse.
_PREDICT_URL = re.compile(r"/v1/models/([^/:]+)(?:/versions/([0-9]{1,18})|/labels/([^/:]+))?:predict")


@dataclasses.dataclass(frozen=True)
class Target:
    """The model and version (or label) a URL names."""

    model: str
    version: int | None = None
    label: str | None = None


def error_json(error: ServingError) -> tuple[int, str]:
    """A ServingError as TF Serving's REST answer: (HTTP status, `{"error": message}`)."""
    return http_status(error.code), json.dumps({"error": error.message})


def signature_name(body: Any) -> str:
    """The body's `signature_name` ("" when absent), or TF Serving's error for a non-string."""
    name = body.get("signature_name", "") if isinstance(body, dict) else ""
    if not isinstance(name, str):
        raise ServingError(
            "INVALID_ARGUMENT", "JSON Value not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


async def run_plan(servable: Servable, plan: inference.Plan, timeout_s: float) -> dict[str, np.ndarray]:
    """Runs `plan` through the servable's batcher and waits at most `timeout_s` for its outputs.

    Raises:
        ServingError: DEADLINE_EXCEEDED after `timeout_s` (the request is dropped if it has not run yet).
    """
    try:
        return await await_result(servable.submit(plan.signature.name, plan.inputs, plan.outputs), timeout_s)
    except TimeoutError:
        raise ServingError("DEADLINE_EXCEEDED", f"request timed out after {timeout_s}s") from None


async def predict_json(servable: Servable, raw: bytes, limits: LimitsConfig) -> str:
    """Predict from a REST body: `{"instances": [...]}` (row format) or `{"inputs": ...}` (columnar).

    Args:
        servable: the version that answers.
        raw: the request body.
        limits: the server's request limits.

    Returns:
        TF Serving's answer text (`{"predictions": ...}` or `{"outputs": ...}`).

    Raises:
        ServingError: TF Serving's status and message for what is wrong.
    """
    body = codec.parse_json(raw)
    name = signature_name(body)
    arrays, row_format = codec.decode_predict_json(body, servable.signature(name), limits.max_instances)
    plan = inference.predict_plan(servable, name, arrays, [], limits)
    return codec.encode_predict_json(await run_plan(servable, plan, limits.request_timeout_s), row_format)


async def answer(
    store: ModelStore, metrics: ServingMetrics, target: Target, api: str, work: Callable[[Servable], Awaitable[str]]
) -> tuple[int, str]:
    """Runs `work(servable)` on the version `target` names, mapping errors and counting the request.

    Args:
        store: the loaded models.
        metrics: where the request is counted.
        target: the model and version (or label) asked for.
        api: the API's name in the metrics ("predict", "classify", ...).
        work: the API call, servable -> answer text.

    Returns:
        (HTTP status, answer text): TF Serving's error for a ServingError or MemoryError, 500 for any other exception.
    """
    started = time.perf_counter()
    served: int | str = "none"
    code = "OK"
    try:
        servable = store.get(target.model, target.version, target.label)
        served = servable.version
        status, text = 200, await work(servable)
    except ServingError as error:
        code = error.code
        status, text = error_json(error)
    except MemoryError:  # as the gRPC API answers it
        code = "RESOURCE_EXHAUSTED"
        status, text = error_json(ServingError(code, "the request needs more memory than the server has"))
    except Exception:  # a bug, not the request's fault: logged, answered 500 and counted like any failure
        log.exception("unhandled error in %s of model %r", api, target.model)
        code, status, text = "INTERNAL", 500, INTERNAL_ERROR
    metrics.observe_request(target.model, served, api, code, time.perf_counter() - started)
    return status, text


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PredictRoute:
    """ASGI route answering TF Serving's REST `:predict` URLs; everything else goes to `app`.

    Args:
        app: the ASGI app behind (the FastAPI app with every other route).
        store: the loaded models.
        metrics: where requests are counted.
        limits: the server's request limits.
    """

    def __init__(self, app: Any, store: ModelStore, metrics: ServingMetrics, limits: LimitsConfig):
        self.app = app
        self._store = store
        self._metrics = metrics
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = _PREDICT_URL.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        if raw is None:
            return
        name, version, label = match.groups()
        target = Target(name, None if version is None else int(version), label)
        status, text = await answer(
            self._store, self._metrics, target, "predict", lambda servable: predict_json(servable, raw, self._limits)
        )
        body = text.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), _JSON_HEADER]})
        await send({"type": "http.response.body", "body": body})
