"""TF Serving's REST API on FastAPI, plus :classify_image, health, readiness, limits and metrics.

Same URLs, bodies and answers as TF Serving (model_servers/http_rest_api_handler.cc,
util/json_tensor.cc), so its REST clients work unchanged:

```
GET  /v1/models/{name}[/versions/{v}|/labels/{label}][/metadata]
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict     {"instances": [...]} | {"inputs": ...}
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:classify    {"examples": [...], "context": {...}}
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:regress     {"examples": [...], "context": {...}}
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:classify_image?top_k=5   (multipart or raw image)
GET  /healthz  /readyz  /limits  /metrics  /docs  /openapi.json
```

Each handler below is written once and registered for the three URL forms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
from typing import Any, Awaitable, Callable

import numpy as np
import tensorflow as tf
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from vispipe.serving import codec, inference
from vispipe.serving.config import ServerConfig
from vispipe.serving.errors import ServingError, status_number
from vispipe.serving.images import check_image_pixels, count_pixels, decode_upload
from vispipe.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from vispipe.serving.middleware import GuardMiddleware
from vispipe.serving.model_store import ModelStore
from vispipe.serving.proto_json import metadata_json, proto_json
from vispipe.serving.rest_core import INTERNAL_ERROR, PredictRoute, Target, answer, error_json, predict_json, run_plan, signature_name
from vispipe.serving.servable import Servable
from vispipe.serving.signature import DEFAULT_SIGNATURE

__all__ = ["build_rest_app", "Target"]

log = logging.getLogger("serving")

_JSON = "application/json"
_IMAGE_TYPES = ("image/", "application/octet-stream")
_STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}
_ERROR = {"content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {
    str(code): {"description": text, **_ERROR}
    for code, text in [
        (400, "malformed request"),
        (401, "missing or wrong bearer token"),
        (404, "unknown model or version"),
        (413, "body too large"),
        (503, "queue full or model unloading"),
        (504, "request timed out"),
    ]
}
_EXAMPLES_BODY = {
    "type": "object",
    "properties": {
        "signature_name": {"type": "string"},
        "context": {"type": "object"},
        "examples": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["examples"],
}
_BODIES = {
    "predict": {
        _JSON: {"schema": {"type": "object", "properties": {
            "signature_name": {"type": "string"}, "instances": {"type": "array", "items": {}}, "inputs": {}}}}
    },
    "classify": {_JSON: {"schema": _EXAMPLES_BODY}},
    "regress": {_JSON: {"schema": _EXAMPLES_BODY}},
    "classify_image": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _json_response(body: Any, status: int = 200) -> Response:
    text = body if isinstance(body, str) else json.dumps(body, allow_nan=True)
    return Response(text, status_code=status, media_type=_JSON)


def _error_response(error: ServingError) -> Response:
    status, text = error_json(error)
    return _json_response(text, status)


# -- URL forms: which version a request is for -------------------------------------------


def _malformed(request: Request) -> ServingError:
    return ServingError("INVALID_ARGUMENT", f"Malformed request: {request.method} {request.url.path}")


# async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request.
async def _latest(request: Request, model_name: str) -> Target:
    if ":" in model_name:  # TF Serving's URL pattern has no ':' in a model name
        raise _malformed(request)
    return Target(model_name)


async def _by_version(request: Request, model_name: str, version: str) -> Target:
    if ":" in model_name or not (version.isascii() and version.isdigit()):
        raise _malformed(request)
    if int(version) >= 2**63:
        raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: {version[:40]} to numeric.")
    return Target(model_name, version=int(version))


async def _by_label(request: Request, model_name: str, label: str) -> Target:
    if ":" in model_name or ":" in label:
        raise _malformed(request)
    return Target(model_name, label=label)


_FORMS: dict[str, Callable[..., Awaitable[Target]]] = {"": _latest, "/versions/{version}": _by_version, "/labels/{label}": _by_label}


# -- shared steps ------------------------------------------------------------------------


async def _answer(request: Request, target: Target, api: str, work: Callable[[Servable], Awaitable[str]]) -> Response:
    """Runs `work(servable)` on the version `target` names (see rest_core.answer), as a Response."""
    state = request.app.state
    status, text = await answer(state.store, state.metrics, target, api, work)
    return _json_response(text, status)


def _run(request: Request, servable: Servable, plan: inference.Plan) -> Awaitable[dict[str, np.ndarray]]:
    return run_plan(servable, plan, request.app.state.config.limits.request_timeout_s)


# -- handlers (one per API, registered for every URL form) -------------------------------


async def model_status(request: Request, target: Target) -> Response:
    """Version states of a model, newest first (TF Serving GetModelStatus; a label selects nothing, as there)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in request.app.state.store.status(target.model, target.version):
        entry = response.model_version_status.add(version=status.version, state=_STATES[status.state])
        entry.status.error_code = status_number(status.error_code)
        entry.status.error_message = status.error_message
    return _json_response(proto_json(response))


async def model_metadata(request: Request, target: Target) -> Response:
    """The served version's signature definitions (TF Serving GetModelMetadata), printed as TF Serving prints them."""

    async def work(servable: Servable) -> str:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs)
        response.metadata["signature_def"].Pack(sig_map)
        return metadata_json(response)

    return await _answer(request, target, "metadata", work)


async def predict(request: Request, target: Target) -> Response:
    """Predict: `{"instances": [...]}` (row format) or `{"inputs": ...}` (columnar format).

    The server answers these URLs in `rest_core.PredictRoute`, with the same steps; this
    route documents them and answers what that route passes on.
    """
    raw = await request.body()
    limits = request.app.state.config.limits
    return await _answer(request, target, "predict", lambda servable: predict_json(servable, raw, limits))


async def _examples_api(
    request: Request, target: Target, api: str, plan: Callable, results: Callable, encode: Callable[[Any], str]
) -> Response:
    """Classify or regress: tf.Examples from JSON -> the API's plan -> run -> its JSON answer."""

    async def work(servable: Servable) -> str:
        limits = request.app.state.config.limits
        body = codec.parse_json(await request.body())
        signature = signature_name(body)
        checked = plan(servable, signature, codec.examples_from_json(body, limits.max_instances), limits)
        return encode(results(checked, await _run(request, servable, checked)))

    return await _answer(request, target, api, work)


async def classify(request: Request, target: Target) -> Response:
    """Classify tf.Examples given as JSON: `{"examples": [{feature: value}], "context": {...}}`."""
    return await _examples_api(
        request, target, "classify", inference.classify_plan, inference.classification_results, codec.classification_json
    )


async def regress(request: Request, target: Target) -> Response:
    """Regress tf.Examples given as JSON: `{"examples": [{feature: value}], "context": {...}}`."""
    return await _examples_api(
        request, target, "regress", inference.regress_plan, inference.regression_results, codec.regression_json
    )


async def _upload(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except (ValueError, AssertionError, StarletteHTTPException) as error:
            raise ServingError("INVALID_ARGUMENT", f"malformed multipart body: {str(error)[:200]}") from None
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise ServingError("INVALID_ARGUMENT", "multipart body: expected one file field (e.g. 'image'), got none")
        return await files[0].read()
    if content_type.startswith(_IMAGE_TYPES):
        return await request.body()
    raise ServingError(
        "UNSUPPORTED_MEDIA_TYPE",
        f"expected multipart/form-data, image/* or application/octet-stream, got {content_type[:80]!r}",
    )


def _image_inputs(data: bytes, servable: Servable, max_pixels: int) -> dict[str, np.ndarray]:
    """Upload bytes -> the serving_default input: the bytes themselves, or the decoded uint8 image."""
    sig = servable.signature(DEFAULT_SIGNATURE)
    if len(sig.inputs) != 1:
        raise ServingError("INVALID_ARGUMENT", f"classify_image needs a one-input signature, {sig.name!r} has {sorted(sig.inputs)}")
    check_image_pixels(count_pixels([data]), max_pixels, "the upload")
    name, spec = next(iter(sig.inputs.items()))
    if spec.dtype == tf.string:
        return {name: np.array([data], dtype=object)}
    shape = spec.shape.as_list() if spec.shape.rank is not None else [None, None, None, None]
    if len(shape) != 4:
        raise ServingError("INVALID_ARGUMENT", f"classify_image needs an image input [batch, h, w, c], got {shape}")
    image = decode_upload(data, shape[3] or 0)
    height, width = shape[1], shape[2]
    if height and width and tuple(image.shape[:2]) != (height, width):
        resized = tf.image.resize(tf.cast(image, tf.float32), (height, width))
        image = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
    return {name: image[None].astype(spec.dtype.as_numpy_dtype)}


def _top_k(outputs: dict[str, np.ndarray], labels: list[str] | None, top_k: int) -> list[dict[str, Any]]:
    if labels is None and "classes" in outputs and "scores" in outputs:
        # No labels file: the export's own top-k classes/scores outputs name the labels.
        pairs = zip(outputs["classes"][0][:top_k], outputs["scores"][0][:top_k])
        return [{"label": c.decode("utf-8", "replace"), "probability": float(p)} for c, p in pairs]
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"][0]
    else:
        floats = [v for v in outputs.values() if v.dtype.kind == "f" and v.ndim == 2]
        if len(floats) != 1:
            raise ServingError("FAILED_PRECONDITION", f"classify_image needs a 'probabilities' output [batch, classes]; got {sorted(outputs)}")
        probabilities = floats[0][0]
    names = labels or []
    return [
        {"label": names[i] if i < len(names) else str(i), "probability": float(probabilities[i])}
        for i in np.argsort(-probabilities, kind="stable")[:top_k]
    ]


async def classify_image(request: Request, target: Target, top_k: int = 5) -> Response:
    """Top-k `{label, probability}` for one uploaded JPEG, PNG, GIF or BMP (multipart field or raw body)."""

    async def work(servable: Servable) -> str:
        if not 1 <= top_k <= 1000:
            raise ServingError("INVALID_ARGUMENT", f"top_k must be between 1 and 1000, got {top_k}")
        data = await _upload(request)
        if not data:
            raise ServingError("INVALID_ARGUMENT", "the upload is empty")
        limits = request.app.state.config.limits
        inputs = await asyncio.to_thread(_image_inputs, data, servable, limits.max_image_pixels)
        sig = servable.signature(DEFAULT_SIGNATURE)
        plan = inference.Plan(sig, inputs, tuple(sig.outputs), sig.method_name, 1)
        predictions = _top_k(await _run(request, servable, plan), servable.labels, top_k)
        return json.dumps({"model_spec": {"name": servable.name, "version": str(servable.version)}, "predictions": predictions})

    return await _answer(request, target, "classify_image", work)


def _bind(handler: Callable[..., Awaitable[Response]], resolve: Callable[..., Awaitable[Target]], suffix: str) -> Callable:
    """`handler` as an endpoint of one URL form: its `target` comes from that form's path parameters.

    The endpoint declares the path parameters itself (FastAPI documents and validates them)
    and resolves the target in-line, without a per-request dependency.
    """
    path_params = [p for p in inspect.signature(resolve).parameters.values() if p.name != "request"]
    names = [p.name for p in path_params]

    async def endpoint(**kwargs: Any) -> Response:
        target = await resolve(kwargs["request"], **{name: kwargs.pop(name) for name in names})
        return await handler(target=target, **kwargs)

    own = [p for p in inspect.signature(handler).parameters.values() if p.name != "target"]
    endpoint.__signature__ = inspect.Signature(own[:1] + path_params + own[1:])
    endpoint.__name__ = handler.__name__ + suffix
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _api_router() -> APIRouter:
    router = APIRouter()
    for form, resolve in _FORMS.items():
        suffix = {"": "", "/versions/{version}": "_by_version", "/labels/{label}": "_by_label"}[form]
        base = "/v1/models/{model_name}" + form
        router.add_api_route(base, _bind(model_status, resolve, suffix), methods=["GET"], tags=["status"], responses=_ERRORS)
        router.add_api_route(base + "/metadata", _bind(model_metadata, resolve, suffix), methods=["GET"],
                             tags=["metadata"], responses=_ERRORS)
        for api, handler in (("predict", predict), ("classify", classify), ("regress", regress), ("classify_image", classify_image)):
            router.add_api_route(
                f"{base}:{api}", _bind(handler, resolve, suffix), methods=["POST"], tags=[api], responses=_ERRORS,
                openapi_extra={"requestBody": {"required": True, "content": _BODIES[api]}},
            )
    return router


API_ROUTER = _api_router()


# -- operations --------------------------------------------------------------------------


async def healthz() -> Response:
    """Liveness: the process answers."""
    return _json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: every model has a loaded, warmed version."""
    store: ModelStore = request.app.state.store
    loaded = store.loaded()
    if not store.ready():
        missing = sorted(name for name, versions in loaded.items() if not versions)
        return _json_response({"error": f"not ready: no version loaded for {missing}"}, 503)
    return _json_response({"status": "ready", "models": loaded})


async def limits(request: Request) -> Response:
    """The request limits this server enforces (body bytes, instances, tensor elements, image pixels, timeout)."""
    return _json_response(dataclasses.asdict(request.app.state.config.limits))


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: vispipe's, and TF Serving's request metrics by TF Serving's names."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def missing_model_name() -> Response:
    """TF Serving answers a status request without a model name with 400."""
    return _json_response({"error": "Missing model name in request."}, 400)


async def malformed(request: Request, path: str) -> Response:
    """Any other /v1 URL: TF Serving's "Malformed request" (400)."""
    return _error_response(_malformed(request))


OPS_ROUTER = APIRouter(tags=["operations"])
OPS_ROUTER.add_api_route("/healthz", healthz, methods=["GET"])
OPS_ROUTER.add_api_route("/readyz", readyz, methods=["GET"], responses={"503": {"description": "no version loaded yet", **_ERROR}})
OPS_ROUTER.add_api_route("/limits", limits, methods=["GET"])
OPS_ROUTER.add_api_route("/metrics", prometheus_metrics, methods=["GET"])
OPS_ROUTER.add_api_route("/v1/models", missing_model_name, methods=["GET"], include_in_schema=False)
OPS_ROUTER.add_api_route("/v1/{path:path}", malformed, methods=["GET", "POST"], include_in_schema=False)


# -- errors ------------------------------------------------------------------------------


async def _serving_error(request: Request, error: ServingError) -> Response:
    return _error_response(error)


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    details = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
    return _json_response({"error": f"invalid request: {details}"[:500]}, 400)


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    return _json_response({"error": str(error.detail)}, error.status_code)


async def _internal_error(request: Request, error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json_response(INTERNAL_ERROR, 500)


def build_rest_app(config: ServerConfig, store: ModelStore, metrics: ServingMetrics, lifespan: Any = None) -> FastAPI:
    """The FastAPI app serving `store`.

    Args:
        config: limits, auth, CORS and monitoring settings.
        store: the loaded models.
        metrics: where requests are counted.
        lifespan: FastAPI lifespan (starts/stops the store and gRPC; see vispipe.serving.app).

    Returns:
        The app, with `app.state.store`, `app.state.metrics` and `app.state.config` set.

    Example:
    >>> app = build_rest_app(config, store, ServingMetrics(store.queue_depths, store.loaded))  # doctest: +SKIP
    """
    app = FastAPI(
        title="vispipe model server",
        version="1",
        description="TF Serving compatible REST API (predict, classify, regress, metadata, status) with dynamic "
        "batching. Request limits are listed at /limits.",
        lifespan=lifespan,
    )
    app.state.store, app.state.metrics, app.state.config = store, metrics, config
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    if config.prometheus_path:
        app.add_api_route(config.prometheus_path, prometheus_metrics, methods=["GET"], include_in_schema=False)
    app.include_router(API_ROUTER)
    app.include_router(OPS_ROUTER)
    _add_error_schema(app)
    app.add_middleware(PredictRoute, store=store, metrics=metrics, limits=config.limits)
    app.add_middleware(GuardMiddleware, max_body_bytes=config.limits.max_body_bytes, auth_token=config.auth_token)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    return app


def _add_error_schema(app: FastAPI) -> None:
    """Adds the `Error` schema the error responses refer to."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
