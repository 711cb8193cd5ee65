"""TF Serving's gRPC API: PredictionService (Predict, Classify, Regress, MultiInference,
GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest).

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
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from vispipe.serving import inference
from vispipe.serving.config import ServerConfig
from vispipe.serving.errors import ServingError, grpc_status, status_number
from vispipe.serving.metrics import ServingMetrics
from vispipe.serving.model_store import ModelStore
from vispipe.serving.models_config import specs_from_proto
from vispipe.serving.protos import arrays_from_tensor_protos, tensor_protos_from_arrays
from vispipe.serving.servable import Servable
from vispipe.serving.signature import CLASSIFY_METHOD

__all__ = ["start_grpc_server"]

log = logging.getLogger("serving")

_STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def _fill_spec(target: Any, name: str, version: int, signature: str | None) -> None:
    target.name = name
    target.version.value = version
    if signature is not None:
        target.signature_name = signature


def _fill_classification(result: Any, rows: list[list[tuple[str, float]]]) -> None:
    for row in rows:
        classifications = result.classifications.add()
        for label, score in row:
            classifications.classes.add(label=label, score=score)


def _fill_regression(result: Any, values: list[float]) -> None:
    for value in values:
        result.regressions.add(value=value)


class _Services(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: ModelStore, config: ServerConfig, metrics: ServingMetrics | None):
        self._store = store
        self._config = config
        self._limits = config.limits
        self._metrics = metrics
        self._token = f"Bearer {config.auth_token}" if config.auth_token else None

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if self._token is not None:
            metadata = dict(context.invocation_metadata())
            if not hmac.compare_digest(metadata.get("authorization", ""), self._token):
                raise ServingError("UNAUTHENTICATED", "missing or wrong bearer token (authorization metadata)")

    def _servable(self, spec: Any) -> Servable:
        if not spec.name:
            raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        return self._store.get(
            spec.name,
            version=spec.version.value if choice == "version" else None,
            label=spec.version_label if choice == "version_label" else None,
        )

    def _call(self, api: str, spec: Any, context: grpc.ServicerContext, work: Callable[[Servable], Any]) -> Any:
        """Auth, servable lookup, error mapping and metrics around one RPC."""
        started = time.perf_counter()
        served: int | str = "none"
        code = "OK"
        try:
            self._authorize(context)
            servable = self._servable(spec)
            served = servable.version
            return work(servable)
        except ServingError as error:
            code = error.code
            context.abort(grpc_status(error.code), error.message)
        except MemoryError:
            code = "RESOURCE_EXHAUSTED"
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the request needs more memory than the server has")
        except Exception:  # a bug, not the client's input: logged, answered INTERNAL (never UNKNOWN)
            log.exception("unhandled error in %s", api)
            code = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        finally:
            if self._metrics is not None:
                self._metrics.observe_request(spec.name, served, api, code, time.perf_counter() - started, "GRPC")

    def _wait(self, servable: Servable, plan: inference.Plan, context: grpc.ServicerContext) -> dict:
        remaining = context.time_remaining()
        timeout = min(self._limits.request_timeout_s, remaining) if remaining is not None else self._limits.request_timeout_s
        future = servable.submit(plan.signature.name, plan.inputs, plan.outputs)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ServingError("DEADLINE_EXCEEDED", f"request timed out after {timeout:.3g}s") from None

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        def work(servable: Servable) -> predict_pb2.PredictResponse:
            signature = request.model_spec.signature_name
            inference.predict_signature(servable, signature, grpc=True)
            inputs = arrays_from_tensor_protos(request.inputs, self._limits.max_tensor_elements)
            plan = inference.predict_plan(servable, signature, inputs, list(request.output_filter), self._limits, grpc=True)
            outputs = self._wait(servable, plan, context)
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, request.model_spec.name, servable.version, plan.signature.name)
            tensor_protos_from_arrays(outputs, response.outputs)
            return response

        return self._call("predict", request.model_spec, context, work)

    def _examples_rpc(self, api: str, request: Any, context: grpc.ServicerContext, plan: Callable,
                      answer: Callable[[inference.Plan, dict, Any], None], response: Any) -> Any:
        """Classify or Regress: plan, run, and `answer(plan, outputs, response)` fills the result."""

        def work(servable: Servable) -> Any:
            checked = plan(servable, request.model_spec.signature_name, request.input, self._limits)
            answer(checked, self._wait(servable, checked, context), response.result)
            _fill_spec(response.model_spec, request.model_spec.name, servable.version, checked.signature.name)
            return response

        return self._call(api, request.model_spec, context, work)

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext) -> Any:
        return self._examples_rpc(
            "classify", request, context, inference.classify_plan,
            lambda plan, outputs, result: _fill_classification(result, inference.classification_results(plan, outputs)),
            classification_pb2.ClassificationResponse(),
        )

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext) -> Any:
        return self._examples_rpc(
            "regress", request, context, inference.regress_plan,
            lambda plan, outputs, result: _fill_regression(result, inference.regression_results(plan, outputs)),
            regression_pb2.RegressionResponse(),
        )

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext) -> Any:
        def work(servable: Servable) -> inference_pb2.MultiInferenceResponse:
            plans = inference.multi_inference_plans(servable, list(request.tasks), request.input, self._limits)
            response = inference_pb2.MultiInferenceResponse()
            for task, plan in zip(request.tasks, plans):
                outputs = self._wait(servable, plan, context)
                result = response.results.add()
                _fill_spec(result.model_spec, task.model_spec.name, servable.version, plan.signature.name)
                if plan.method == CLASSIFY_METHOD:
                    _fill_classification(result.classification_result, inference.classification_results(plan, outputs))
                else:
                    _fill_regression(result.regression_result, inference.regression_results(plan, outputs))
            return response

        spec = request.tasks[0].model_spec if request.tasks else inference_pb2.InferenceTask().model_spec
        return self._call("multi_inference", spec, context, work)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext) -> Any:
        def work(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.metadata_field:
                raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_spec(response.model_spec, servable.name, servable.version, None)
            response.metadata["signature_def"].Pack(get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs))
            return response

        return self._call("metadata", request.model_spec, context, work)

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext) -> Any:
        try:
            self._authorize(context)
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            spec = request.model_spec
            # As in TF Serving, only a version narrows the answer; a label does not.
            statuses = self._store.status(spec.name, spec.version.value if spec.HasField("version") else None)
        except ServingError as error:
            context.abort(grpc_status(error.code), error.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add(version=status.version, state=_STATES[status.state])
            entry.status.error_code = status_number(status.error_code)
            entry.status.error_message = status.error_message
        return response

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext) -> Any:
        try:
            self._authorize(context)
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported",
                )
            try:
                specs = specs_from_proto(request.config, "ReloadConfigRequest")
            except ValueError as error:
                raise ServingError("INVALID_ARGUMENT", str(error)) from None
            self._store.reload(specs)
        except ServingError as error:
            log.error("ReloadConfig failed: %s", error.message)
            context.abort(grpc_status(error.code), error.message)
        log.info("ReloadConfig: now serving %s", [spec.name for spec in specs])
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


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
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", config.limits.max_body_bytes),
                 ("grpc.max_send_message_length", 64 << 20)],
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
