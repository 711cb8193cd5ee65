"""TF Serving's REST API on FastAPI, plus :classify_image, health, readiness and metrics.

Same URLs, bodies and `{"error": "..."}` format as TF Serving, so its REST clients
work unchanged:

```
GET  /v1/models/{name}[/versions/{v}|/labels/{label}][/metadata]
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict     {"instances": [...]} | {"inputs": ...}
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:classify    {"examples": [...]}
POST /v1/models/{name}[/versions/{v}|/labels/{label}]:classify_image?top_k=5   (multipart or raw image)
GET  /healthz  /readyz  /metrics  /docs  /openapi.json
```
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vispipe.serving import codec
from vispipe.serving.config import ServerConfig
from vispipe.serving.errors import ServingError, http_status
from vispipe.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from vispipe.serving.middleware import GuardMiddleware
from vispipe.serving.model_store import ModelStore
from vispipe.serving.servable import DEFAULT_SIGNATURE, Servable, SignatureInfo

__all__ = ["build_rest_app"]

log = logging.getLogger("serving")

_IMAGE_TYPES = ("image/", "application/octet-stream")

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {
    str(code): {"description": text, **_ERROR}
    for code, text in [
        (400, "malformed request"),
        (401, "missing or wrong bearer token"),
        (404, "unknown model, version or label"),
        (413, "body too large"),
        (503, "queue full or model unloading"),
        (504, "request timed out"),
    ]
}
_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string"},
                    "instances": {"type": "array", "items": {}},
                    "inputs": {},
                },
            }
        }
    },
}
_CLASSIFY_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string"},
                    "context": {"type": "object"},
                    "examples": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["examples"],
            }
        }
    },
}
_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, allow_nan=True), status_code=status, media_type="application/json")


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {str(error)[:200]}") from None


def _parse_version(version: str) -> int:
    # isascii: "²".isdigit() is True, yet int("²") fails.
    if not (version.isascii() and version.isdigit()) or len(version) > 18:
        raise ServingError("NOT_FOUND", f"Malformed request: version must be a number, got {version[:40]!r}")
    return int(version)


def _probabilities(outputs: dict[str, np.ndarray]) -> np.ndarray:
    if "probabilities" in outputs:
        return outputs["probabilities"]
    floats = [v for v in outputs.values() if v.dtype.kind == "f" and v.ndim == 2]
    if len(floats) != 1:
        raise ServingError(
            "FAILED_PRECONDITION",
            f"classify_image needs a 'probabilities' output [batch, classes]; got {sorted(outputs)}",
        )
    return floats[0]


def _decode_image(data: bytes, sig: SignatureInfo) -> dict[str, np.ndarray]:
    """Upload bytes -> the serving_default input: the bytes themselves, or a decoded uint8 image."""
    import tensorflow as tf

    if len(sig.inputs) != 1:
        raise ServingError("INVALID_ARGUMENT", f"classify_image needs a one-input signature, {sig.name!r} has {sorted(sig.inputs)}")
    name, spec = next(iter(sig.inputs.items()))
    if spec.dtype == tf.string:
        return {name: np.array([data], dtype=object)}
    shape = spec.shape.as_list() if spec.shape.rank is not None else [None, None, None, None]
    if len(shape) != 4:
        raise ServingError("INVALID_ARGUMENT", f"classify_image needs an image input [batch, h, w, c], got {shape}")
    channels = shape[3] or 0
    try:
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
        raise ServingError("INVALID_ARGUMENT", "could not decode the upload as an image (expected JPEG, PNG, GIF or BMP)") from None
    height, width = shape[1], shape[2]
    if height and width and tuple(image.shape[:2]) != (height, width):
        image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, (height, width))), 0, 255), tf.uint8)
    return {name: image.numpy()[None].astype(spec.dtype.as_numpy_dtype)}


def build_rest_app(config: ServerConfig, store: ModelStore, metrics: ServingMetrics, lifespan: Any = None) -> FastAPI:
    """The FastAPI app serving `store`.

    Args:
        config: limits, auth and CORS settings.
        store: the loaded models.
        metrics: where requests are counted.
        lifespan: FastAPI lifespan (starts/stops the store and gRPC; see vispipe.serving.app).

    Returns:
        The app, with `app.state.store` and `app.state.metrics` set.

    Example:
    >>> app = build_rest_app(config, store, ServingMetrics(store.queue_depths, store.loaded))  # doctest: +SKIP
    """
    limits = config.limits
    app = FastAPI(
        title="vispipe model server",
        version="1",
        description="TF Serving compatible REST API (predict, classify, metadata, status) with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = metrics
    app.openapi_schema = None

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, error: ServingError) -> Response:
        return _json_response({"error": error.message}, http_status(error.code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> Response:
        details = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return _json_response({"error": f"invalid request: {details}"[:500]}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        return _json_response({"error": str(error.detail)}, error.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json_response({"error": "internal server error"}, 500)

    async def _result(servable: Servable, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        future = servable.submit(signature, inputs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", f"request timed out after {limits.request_timeout_s}s") from None

    async def _answer(api: str, name: str, version: str | None, label: str | None, work) -> Response:
        """Runs `work(servable)`, turning ServingErrors into TF Serving errors and counting the request."""
        started = time.perf_counter()
        served = "none"
        try:
            servable = store.get(name, None if version is None else _parse_version(version), label)
            served = servable.version
            status, body = 200, await work(servable)
        except ServingError as error:
            status, body = http_status(error.code), {"error": error.message}
        metrics.observe_request(name, served, api, status, time.perf_counter() - started)
        return _json_response(body, status)

    # -- status and metadata -------------------------------------------------------------

    def _status_body(name: str, version: int | None) -> dict[str, Any]:
        return {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for s in store.status(name, version)
            ]
        }

    def _metadata_body(servable: Servable) -> dict[str, Any]:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs)
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(sig_map, preserving_proto_field_name=True)},
        }

    @app.get("/v1/models/{model_name}", tags=["status"], responses=_ERRORS)
    async def model_status(model_name: str) -> Response:
        """Version states of a model (TF Serving GetModelStatus)."""
        return _json_response(_status_body(model_name, None))

    @app.get("/v1/models/{model_name}/versions/{version}", tags=["status"], responses=_ERRORS)
    async def version_status(model_name: str, version: str) -> Response:
        """State of one version."""
        return _json_response(_status_body(model_name, _parse_version(version)))

    @app.get("/v1/models/{model_name}/labels/{label}", tags=["status"], responses=_ERRORS)
    async def label_status(model_name: str, label: str) -> Response:
        """State of the version a label points to."""
        return _json_response(_status_body(model_name, store.resolve_label(model_name, label)))

    async def _metadata(name: str, version: str | None, label: str | None) -> Response:
        async def work(servable: Servable) -> dict[str, Any]:
            return _metadata_body(servable)

        return await _answer("metadata", name, version, label, work)

    @app.get("/v1/models/{model_name}/metadata", tags=["metadata"], responses=_ERRORS)
    async def metadata(model_name: str) -> Response:
        """Signature definitions of the latest version (TF Serving GetModelMetadata)."""
        return await _metadata(model_name, None, None)

    @app.get("/v1/models/{model_name}/versions/{version}/metadata", tags=["metadata"], responses=_ERRORS)
    async def version_metadata(model_name: str, version: str) -> Response:
        return await _metadata(model_name, version, None)

    @app.get("/v1/models/{model_name}/labels/{label}/metadata", tags=["metadata"], responses=_ERRORS)
    async def label_metadata(model_name: str, label: str) -> Response:
        return await _metadata(model_name, None, label)

    # -- predict -------------------------------------------------------------------------

    async def _predict(request: Request, name: str, version: str | None, label: str | None) -> Response:
        async def work(servable: Servable) -> dict[str, Any]:
            body = _parse_json(await request.body())
            signature = body.get("signature_name") if isinstance(body, dict) else None
            if signature is not None and not isinstance(signature, str):
                raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
            sig = servable.signature(signature)
            inputs, row_format = codec.decode_predict_json(body, sig, limits.max_instances)
            return codec.encode_predict_json(await _result(servable, sig.name, inputs), row_format)

        return await _answer("predict", name, version, label, work)

    predict_doc = {"openapi_extra": {"requestBody": _PREDICT_BODY}, "responses": _ERRORS, "tags": ["predict"]}

    @app.post("/v1/models/{model_name}:predict", **predict_doc)
    async def predict(model_name: str, request: Request) -> Response:
        """Predict with the latest version: `{"instances": [...]}` or `{"inputs": ...}`."""
        return await _predict(request, model_name, None, None)

    @app.post("/v1/models/{model_name}/versions/{version}:predict", **predict_doc)
    async def version_predict(model_name: str, version: str, request: Request) -> Response:
        return await _predict(request, model_name, version, None)

    @app.post("/v1/models/{model_name}/labels/{label}:predict", **predict_doc)
    async def label_predict(model_name: str, label: str, request: Request) -> Response:
        return await _predict(request, model_name, None, label)

    # -- classify ------------------------------------------------------------------------

    async def _classify(request: Request, name: str, version: str | None, label: str | None) -> Response:
        async def work(servable: Servable) -> dict[str, Any]:
            body = _parse_json(await request.body())
            signature = body.get("signature_name") if isinstance(body, dict) else None
            if signature is not None and not isinstance(signature, str):
                raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
            sig = servable.classify_signature(signature)
            serialized = codec.examples_from_json(body, limits.max_instances)
            outputs = await _result(servable, sig.name, {next(iter(sig.inputs)): serialized})
            return {"results": [[[label_, score] for label_, score in row] for row in codec.classification_results(outputs)]}

        return await _answer("classify", name, version, label, work)

    classify_doc = {"openapi_extra": {"requestBody": _CLASSIFY_BODY}, "responses": _ERRORS, "tags": ["classify"]}

    @app.post("/v1/models/{model_name}:classify", **classify_doc)
    async def classify(model_name: str, request: Request) -> Response:
        """Classify tf.Examples given as JSON `{"examples": [{feature: value}]}`."""
        return await _classify(request, model_name, None, None)

    @app.post("/v1/models/{model_name}/versions/{version}:classify", **classify_doc)
    async def version_classify(model_name: str, version: str, request: Request) -> Response:
        return await _classify(request, model_name, version, None)

    @app.post("/v1/models/{model_name}/labels/{label}:classify", **classify_doc)
    async def label_classify(model_name: str, label: str, request: Request) -> Response:
        return await _classify(request, model_name, None, label)

    # -- classify_image ------------------------------------------------------------------

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

    async def _classify_image(request: Request, name: str, version: str | None, label: str | None, top_k: int) -> Response:
        async def work(servable: Servable) -> dict[str, Any]:
            if not 1 <= top_k <= 1000:
                raise ServingError("INVALID_ARGUMENT", f"top_k must be between 1 and 1000, got {top_k}")
            data = await _upload(request)
            if not data:
                raise ServingError("INVALID_ARGUMENT", "the upload is empty")
            sig = servable.signature(DEFAULT_SIGNATURE)
            inputs = await asyncio.to_thread(_decode_image, data, sig)
            outputs = await _result(servable, sig.name, inputs)
            if servable.labels is None and "classes" in outputs and "scores" in outputs:
                # No labels file: the export's own top-k classes/scores outputs name the labels.
                pairs = zip(outputs["classes"][0][:top_k], outputs["scores"][0][:top_k])
                predictions = [{"label": c.decode("utf-8", "replace"), "probability": float(p)} for c, p in pairs]
            else:
                probabilities = _probabilities(outputs)[0]
                labels = servable.labels or []
                predictions = [
                    {"label": labels[i] if i < len(labels) else str(i), "probability": float(probabilities[i])}
                    for i in np.argsort(-probabilities, kind="stable")[:top_k]
                ]
            return {"model_spec": {"name": servable.name, "version": str(servable.version)}, "predictions": predictions}

        return await _answer("classify_image", name, version, label, work)

    image_doc = {"openapi_extra": {"requestBody": _IMAGE_BODY}, "responses": _ERRORS, "tags": ["classify"]}

    @app.post("/v1/models/{model_name}:classify_image", **image_doc)
    async def classify_image(model_name: str, request: Request, top_k: int = 5) -> Response:
        """Top-k `{label, probability}` for one uploaded image (multipart field or raw body)."""
        return await _classify_image(request, model_name, None, None, top_k)

    @app.post("/v1/models/{model_name}/versions/{version}:classify_image", **image_doc)
    async def version_classify_image(model_name: str, version: str, request: Request, top_k: int = 5) -> Response:
        return await _classify_image(request, model_name, version, None, top_k)

    @app.post("/v1/models/{model_name}/labels/{label}:classify_image", **image_doc)
    async def label_classify_image(model_name: str, label: str, request: Request, top_k: int = 5) -> Response:
        return await _classify_image(request, model_name, None, label, top_k)

    # -- operations ----------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return _json_response({"status": "ok"})

    @app.get("/readyz", tags=["operations"], responses={"503": {"description": "no version loaded yet", **_ERROR}})
    async def readyz() -> Response:
        """Readiness: every model has a loaded, warmed version."""
        loaded = store.loaded()
        if not store.ready():
            missing = sorted(name for name, versions in loaded.items() if not versions)
            return _json_response({"error": f"not ready: no version loaded for {missing}"}, 503)
        return _json_response({"status": "ready", "models": loaded})

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    _add_error_schema(app)
    app.add_middleware(GuardMiddleware, max_body_bytes=limits.max_body_bytes, auth_token=config.auth_token)
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
