"""TF Serving's gRPC API: PredictionService (Predict, Classify, GetModelMetadata) and ModelService.GetModelStatus.

Uses the protos and service stubs shipped in `tensorflow-serving-api`, so its
`PredictionServiceStub` / `ModelServiceStub` clients talk to this server unchanged.

```python
server, port = start_grpc_server(store, ServerConfig(models=[...], grpc_port=8500))
server.stop(grace=5)
```
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
import time
from typing import Any, Callable

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from vispipe.serving.codec import check_inputs, classification_results
from vispipe.serving.config import ServerConfig
from vispipe.serving.errors import ServingError, grpc_status, http_status
from vispipe.serving.metrics import ServingMetrics
from vispipe.serving.model_store import ModelStore
from vispipe.serving.protos import arrays_from_tensor_protos, examples_from_input, tensor_protos_from_arrays
from vispipe.serving.servable import Servable

__all__ = ["start_grpc_server"]

log = logging.getLogger("serving")

_STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}
_ERROR_CODES = {"OK": 0, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "NOT_FOUND": 5}


class _Services(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: ModelStore, config: ServerConfig, metrics: ServingMetrics | None):
        self._store = store
        self._config = config
        self._metrics = metrics
        self._token = f"Bearer {config.auth_token}" if config.auth_token else None

    def _call(self, api: str, request: Any, context: grpc.ServicerContext, work: Callable[[Servable], Any]) -> Any:
        """Auth, servable lookup, error mapping and metrics around one RPC."""
        started = time.perf_counter()
        spec = request.model_spec
        served: int | str = "none"
        status = 200
        try:
            if self._token is not None:
                metadata = dict(context.invocation_metadata())
                if not hmac.compare_digest(metadata.get("authorization", ""), self._token):
                    raise ServingError("UNAUTHENTICATED", "missing or wrong bearer token (authorization metadata)")
            choice = spec.WhichOneof("version_choice")
            servable = self._store.get(
                spec.name,
                version=spec.version.value if choice == "version" else None,
                label=spec.version_label if choice == "version_label" else None,
            )
            served = servable.version
            return work(servable)
        except ServingError as error:
            status = http_status(error.code)
            context.abort(grpc_status(error.code), error.message)
        except concurrent.futures.TimeoutError:
            status = 504
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"request timed out after {self._config.limits.request_timeout_s}s")
        finally:
            if self._metrics is not None:
                self._metrics.observe_request(spec.name, served, f"grpc_{api}", status, time.perf_counter() - started)

    def _result(self, servable: Servable, signature: str, inputs: dict) -> dict:
        future = servable.submit(signature, inputs)
        try:
            return future.result(timeout=self._config.limits.request_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        def work(servable: Servable) -> predict_pb2.PredictResponse:
            sig = servable.signature(request.model_spec.signature_name or None)
            inputs = check_inputs(sig, arrays_from_tensor_protos(request.inputs))
            rows = max((a.shape[0] for a in inputs.values() if a.ndim), default=0)
            if rows > self._config.limits.max_instances:
                raise ServingError("INVALID_ARGUMENT", f"{rows} rows in one request; this server takes at most {self._config.limits.max_instances}")
            unknown = sorted(set(request.output_filter) - set(sig.outputs))
            if unknown:
                raise ServingError("INVALID_ARGUMENT", f"output_filter names outputs {unknown} that signature {sig.name!r} lacks; it has {sorted(sig.outputs)}")
            outputs = self._result(servable, sig.name, inputs)
            if request.output_filter:
                outputs = {k: v for k, v in outputs.items() if k in set(request.output_filter)}
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, servable, sig.name)
            tensor_protos_from_arrays(outputs, response.outputs)
            return response

        return self._call("predict", request, context, work)

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext) -> Any:
        def work(servable: Servable) -> classification_pb2.ClassificationResponse:
            sig = servable.classify_signature(request.model_spec.signature_name or None)
            serialized = examples_from_input(request.input)
            if len(serialized) > self._config.limits.max_instances:
                raise ServingError("INVALID_ARGUMENT", f"{len(serialized)} examples in one request; this server takes at most {self._config.limits.max_instances}")
            outputs = self._result(servable, sig.name, {next(iter(sig.inputs)): serialized})
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response.model_spec, servable, sig.name)
            for row in classification_results(outputs):
                classifications = response.result.classifications.add()
                for label, score in row:
                    classifications.classes.add(label=label, score=score)
            return response

        return self._call("classify", request, context, work)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext) -> Any:
        def work(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise ServingError("INVALID_ARGUMENT", f"metadata_field must be ['signature_def'], got {sorted(fields)}")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_spec(response.model_spec, servable, "")
            sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs)
            response.metadata["signature_def"].Pack(sig_map)
            return response

        return self._call("metadata", request, context, work)

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext) -> Any:
        spec = request.model_spec
        try:
            if self._token is not None and not hmac.compare_digest(
                dict(context.invocation_metadata()).get("authorization", ""), self._token
            ):
                raise ServingError("UNAUTHENTICATED", "missing or wrong bearer token (authorization metadata)")
            choice = spec.WhichOneof("version_choice")
            version = spec.version.value if choice == "version" else None
            if choice == "version_label":
                version = self._store.resolve_label(spec.name, spec.version_label)
            statuses = self._store.status(spec.name, version)
        except ServingError as error:
            context.abort(grpc_status(error.code), error.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add(version=status.version, state=_STATES[status.state])
            entry.status.error_code = _ERROR_CODES.get(status.error_code, 2)
            entry.status.error_message = status.error_message
        return response


def _fill_spec(target: Any, servable: Servable, signature: str) -> None:
    target.name = servable.name
    target.version.value = servable.version
    target.signature_name = signature


def start_grpc_server(
    store: ModelStore, config: ServerConfig, metrics: ServingMetrics | None = None, workers: int = 16
) -> tuple[grpc.Server, int]:
    """Starts the gRPC server on `config.host:config.grpc_port` (0 picks a free port).

    Args:
        store: the loaded models.
        config: host, port, limits and auth token.
        metrics: where RPCs are counted.
        workers: RPC threads (each waits on its batch, so many can share one batch).

    Returns:
        (the started server, the bound port).

    Example:
    >>> server, port = start_grpc_server(store, config)  # doctest: +SKIP
    """
    max_message = config.limits.max_body_bytes
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", 64 << 20)],
    )
    services = _Services(store, config, metrics)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    port = server.add_insecure_port(f"{config.host}:{config.grpc_port or 0}")
    if port == 0:
        raise OSError(f"could not bind the gRPC port {config.host}:{config.grpc_port}")
    server.start()
    log.info("gRPC serving on %s:%d", config.host, port)
    return server, port
