"""TF Serving compatibility suite: `vispipe serve` started with TF Serving's own flags answers
TF Serving's REST examples and the tensorflow-serving-api gRPC stubs exactly as TF Serving does.

Models are written here: a TF1 graph SavedModel shaped like TF Serving's half_plus_two test model
(an unshaped placeholder `x` whose signature says [-1, 1], and classify/regress signatures over
tf.Example) in a zero-padded version folder `00000123`, and a TF2 tf.Module in a plain folder `1`.
Every expected answer is what TF Serving's source gives for the request (file named beside it);
the REST examples come from its REST API guide (tensorflow_serving/g3doc/api_rest.md).
One server process serves the whole module (about 30 s to start and load on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
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

from ports import free_ports

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF1, TF2 = "half_plus_two", "tf2_module"


def _write_tf1_half_plus_two(path: str) -> None:
    """TF Serving's half_plus_two (testdata/saved_model_half_plus_two.py) plus an unshaped placeholder.

    `x` is the parsed tf.Example feature (static shape [-1, 1]), as there; `unshaped_x` feeds a
    placeholder without a shape whose signature still claims [-1, 1].
    """
    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        a, b, c = v1.Variable(0.5, name="a"), v1.Variable(2.0, name="b"), v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        x = tf.identity(v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x_any = v1.placeholder(tf.float32, name="x_any")  # no shape at all
        y_any = tf.identity(a * x_any + b, name="y_any")
        info = v1.saved_model.utils.build_tensor_info
        claimed = {name: info(t) for name, t in (("x", x_any), ("y", y_any))}
        for tensor_info in claimed.values():  # the signature claims [-1, 1]; the placeholder does not
            tensor_info.tensor_shape.CopyFrom(tf.TensorShape([None, 1]).as_proto())
        build = v1.saved_model.signature_def_utils.build_signature_def
        examples = {"inputs": info(serialized)}
        signatures = {
            "serving_default": build({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "unshaped_x": build({"x": claimed["x"]}, {"y": claimed["y"]}, "tensorflow/serving/predict"),
            "classify_x_to_y": build(examples, {"scores": info(y)}, "tensorflow/serving/classify"),
            "tensorflow/serving/regress": build(examples, {"outputs": info(y)}, "tensorflow/serving/regress"),
            "regress_x_to_y2": build(examples, {"outputs": info(y2)}, "tensorflow/serving/regress"),
        }
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()


class _HalfPlusTwo(tf.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = tf.Variable(0.5), tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    def _x(self, inputs):
        return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        y = self.a * self._x(inputs) + self.b
        return {"scores": tf.concat([y, -y], axis=1), "classes": tf.tile([["y", "minus_y"]], [tf.shape(y)[0], 1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self.a * self._x(inputs) + self.b}


def _write_tf2_module(path: str) -> None:
    module = _HalfPlusTwo()
    signatures = {"serving_default": module.predict, "classify": module.classify, "regress": module.regress}
    tf.saved_model.save(module, path, signatures=signatures)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    proto.meta_graphs[0].signature_def["classify"].method_name = "tensorflow/serving/classify"
    proto.meta_graphs[0].signature_def["regress"].method_name = "tensorflow/serving/regress"
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())


def _models_config(entries: list[tuple[str, str]], labels: dict[str, int] | None = None) -> str:
    configs = []
    for name, base in entries:
        label_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items() if name == TF1)
        configs.append(f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow"{label_text} }}')
    return "model_config_list { " + " ".join(configs) + " }\n"


class Server:
    def __init__(self, root: str, rest: int, grpc_port: int):
        self.root, self.rest = root, f"http://127.0.0.1:{rest}"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.tf1_base, self.tf2_base = os.path.join(root, TF1), os.path.join(root, TF2)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.rest + path, timeout=60)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.rest + path, content=json.dumps(body), timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tf-serving-compat"))
    _write_tf1_half_plus_two(os.path.join(root, TF1, "00000123"))  # zero-padded: version 123
    _write_tf2_module(os.path.join(root, TF2, "1"))
    files = {
        "models.config": _models_config([(TF1, os.path.join(root, TF1)), (TF2, os.path.join(root, TF2))]),
        "batching.config": "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 1000 }\n"
                           "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 2 }\n",
        "monitoring.config": 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n',
    }
    for name, text in files.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    rest, grpc_port = free_ports(2)
    command = [
        sys.executable, "-m", "vispipe.cli", "serve",  # TF Serving's flags only
        f"--port={grpc_port}", f"--rest_api_port={rest}",
        f"--model_config_file={root}/models.config", "--model_config_file_poll_wait_seconds=1",
        "--file_system_poll_wait_seconds=1", "--enable_batching",
        f"--batching_parameters_file={root}/batching.config", f"--monitoring_config_file={root}/monitoring.config",
        "--allow_version_labels_for_unavailable_models=true",
    ]
    log = open(os.path.join(root, "server.log"), "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    served = Server(root, rest, grpc_port)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if served.get(f"/v1/models/{TF2}").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    if process.poll() is not None or time.monotonic() >= deadline:
        process.kill()
        pytest.fail("server did not start:\n" + open(os.path.join(root, "server.log")).read()[-3000:])
    yield served
    served.channel.close()
    process.terminate()
    process.wait(60)
    log.close()


def _example(x: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}))


def _spec(target, name: str, signature: str, version: int = 123):
    target.name, target.signature_name = name, signature
    target.version.value = version


# -- status ------------------------------------------------------------------------------


def test_status_of_a_zero_padded_version(server):
    # api_rest.md "Get status of the model"; printed by MessageToJsonString with TF Serving's options.
    response = server.get(f"/v1/models/{TF1}")
    assert response.status_code == 200
    assert response.text == (
        '{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": "AVAILABLE",\n'
        '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = TF1
    expected = get_model_status_pb2.GetModelStatusResponse()
    expected.model_version_status.add(version=123, state=30).status.error_code = 0
    assert server.models.GetModelStatus(request, timeout=30) == expected


# -- metadata ----------------------------------------------------------------------------


def _dim(*sizes: int) -> dict:
    return {"dim": [{"size": str(s), "name": ""} for s in sizes], "unknown_rank": False}


UNKNOWN_RANK = {"dim": [], "unknown_rank": True}


def _tensor(dtype: str, shape: dict, name: str) -> dict:
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _signature(inputs: dict, outputs: dict, method: str) -> dict:
    return {"inputs": inputs, "outputs": outputs, "method_name": method, "defaults": {}}


def test_metadata_is_tf_servings_json_with_default_fields(server):
    # http_rest_api_util.cc ToJsonString(GetModelMetadataResponse); compare
    # testdata/saved_model_half_plus_two_2_versions_metadata.json in TF Serving.
    examples = {"inputs": _tensor("DT_STRING", _dim(-1), "tf_example:0")}
    expected = {
        "model_spec": {"name": TF1, "signature_name": "", "version": "123"},
        "metadata": {"signature_def": {"signature_def": {
            "serving_default": _signature({"x": _tensor("DT_FLOAT", _dim(-1, 1), "x:0")},
                                          {"y": _tensor("DT_FLOAT", _dim(-1, 1), "y:0")}, "tensorflow/serving/predict"),
            "unshaped_x": _signature({"x": _tensor("DT_FLOAT", _dim(-1, 1), "x_any:0")},
                                     {"y": _tensor("DT_FLOAT", _dim(-1, 1), "y_any:0")}, "tensorflow/serving/predict"),
            "classify_x_to_y": _signature(examples, {"scores": _tensor("DT_FLOAT", _dim(-1, 1), "y:0")},
                                          "tensorflow/serving/classify"),
            "tensorflow/serving/regress": _signature(examples, {"outputs": _tensor("DT_FLOAT", _dim(-1, 1), "y:0")},
                                                     "tensorflow/serving/regress"),
            "regress_x_to_y2": _signature(examples, {"outputs": _tensor("DT_FLOAT", _dim(-1, 1), "y2:0")},
                                          "tensorflow/serving/regress"),
        }}},
    }
    response = server.get(f"/v1/models/{TF1}/versions/123/metadata")
    assert response.status_code == 200 and response.json() == expected
    assert response.text.startswith(
        '{\n"model_spec":{\n "name": "half_plus_two",\n "signature_name": "",\n "version": "123"\n}\n,\n'
        '"metadata": {"signature_def": {\n "signature_def": {\n'
    )
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = TF1
    answer = server.predictions.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signatures)
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(server.tf1_base, "00000123", "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    assert dict(signatures.signature_def) == dict(saved.meta_graphs[0].signature_def)
    assert (answer.model_spec.name, answer.model_spec.version.value) == (TF1, 123)


def test_tf2_metadata_lists_the_init_op_as_tf_serving_does(server):
    body = server.get(f"/v1/models/{TF2}/metadata").json()
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["__saved_model_init_op"] == _signature(
        {}, {"__saved_model_init_op": _tensor("DT_INVALID", UNKNOWN_RANK, "NoOp")}, ""
    )
    assert signatures["serving_default"]["inputs"]["x"]["tensor_shape"] == _dim(-1)
    assert body["model_spec"] == {"name": TF2, "signature_name": "", "version": "1"}


# -- predict -----------------------------------------------------------------------------


def test_predict_row_format_lets_the_tf1_graph_decide_shapes(server):
    # api_rest.md: {"instances": [1.0, 2.0, 5.0]} -> {"predictions": [2.5, 3.0, 4.5]}; x:0 has the
    # static shape [-1, 1] but the session is fed [3], as TF Serving's Session::Run is.
    response = server.post(f"/v1/models/{TF1}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert "3.0" in response.text  # json_tensor.cc WriteDecimal keeps ".0" on whole floats
    assert server.post(f"/v1/models/{TF1}:predict", {"instances": [2.0, 3.0, 4.0]}).json() == {"predictions": [3.0, 3.5, 4.0]}
    any_shape = server.post(f"/v1/models/{TF1}:predict", {"signature_name": "unshaped_x", "instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert any_shape.json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    assert server.post(f"/v1/models/{TF2}/versions/1:predict", {"instances": [1.0, 5.0]}).json() == {"predictions": [2.5, 4.5]}


def test_predict_columnar_format(server):
    assert server.post(f"/v1/models/{TF1}:predict", {"inputs": [[1.0], [2.0]]}).json() == {"outputs": [[2.5], [3.0]]}
    named = server.post(f"/v1/models/{TF1}:predict", {"signature_name": "serving_default", "inputs": {"x": [1.0, 5.0]}})
    assert named.json() == {"outputs": [2.5, 4.5]}


def test_grpc_predict_answers_typed_value_fields(server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TF1
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0, 5.0], np.float32)))
    expected = predict_pb2.PredictResponse()
    _spec(expected.model_spec, TF1, "serving_default")  # predict_util.cc MakeModelSpec
    expected.outputs["y"].dtype = tf.float32.as_datatype_enum
    expected.outputs["y"].tensor_shape.dim.add(size=3)
    expected.outputs["y"].float_val.extend([2.5, 3.0, 4.5])  # Tensor::AsProtoField
    assert server.predictions.Predict(request, timeout=30) == expected


# -- classify, regress, multi-inference ----------------------------------------------------


def test_classify_rest_and_grpc(server):
    # json_tensor.cc MakeJsonFromClassificationResult: a signature without classes gives "" labels.
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert server.post(f"/v1/models/{TF1}:classify", body).json() == {"results": [[["", 2.5]], [["", 3.0]]]}
    with_context = {"signature_name": "classify_x_to_y", "context": {"x": 9.0}, "examples": [{"x": 1.0}, {}]}
    assert server.post(f"/v1/models/{TF1}:classify", with_context).json() == {"results": [[["", 2.5]], [["", 6.5]]]}
    request = classification_pb2.ClassificationRequest()
    _spec(request.model_spec, TF1, "classify_x_to_y")
    request.model_spec.ClearField("version")
    request.input.example_list_with_context.context.CopyFrom(_example(9.0))
    request.input.example_list_with_context.examples.extend([_example(1.0), tf.train.Example()])
    expected = classification_pb2.ClassificationResponse()
    _spec(expected.model_spec, TF1, "classify_x_to_y")
    for score in (2.5, 6.5):
        expected.result.classifications.add().classes.add(label="", score=score)
    assert server.predictions.Classify(request, timeout=30) == expected
    labelled = server.post(f"/v1/models/{TF2}:classify", {"signature_name": "classify", "examples": [{"x": 2.0}]})
    assert labelled.json() == {"results": [[["y", 3.0], ["minus_y", -3.0]]]}


def test_regress_rest_and_grpc(server):
    # api_rest.md: a regress call names the signature "tensorflow/serving/regress".
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    response = server.post(f"/v1/models/{TF1}:regress", body)
    assert response.status_code == 200 and response.json() == {"results": [2.5, 3.0]}
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = TF1, "regress_x_to_y2"
    request.input.example_list.examples.extend([_example(1.0), _example(4.0)])
    expected = regression_pb2.RegressionResponse()
    _spec(expected.model_spec, TF1, "regress_x_to_y2")
    expected.result.regressions.add(value=3.5)
    expected.result.regressions.add(value=5.0)
    assert server.predictions.Regress(request, timeout=30) == expected
    assert server.post(f"/v1/models/{TF2}:regress", {"signature_name": "regress", "examples": [{"x": 4.0}]}).json() == {
        "results": [4.0]
    }


def test_multi_inference_runs_classify_and_regress_on_one_input(server):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("tensorflow/serving/regress", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = TF1, signature
    request.input.example_list.examples.extend([_example(1.0), _example(2.0)])
    expected = inference_pb2.MultiInferenceResponse()
    first = expected.results.add()
    _spec(first.model_spec, TF1, "classify_x_to_y")
    for score in (2.5, 3.0):
        first.classification_result.classifications.add().classes.add(label="", score=score)
    second = expected.results.add()
    _spec(second.model_spec, TF1, "tensorflow/serving/regress")
    second.regression_result.regressions.add(value=2.5)
    second.regression_result.regressions.add(value=3.0)
    assert server.predictions.MultiInference(request, timeout=30) == expected
    # TF2 signatures read different placeholders: multi_inference.cc refuses them together.
    for task, signature in zip(request.tasks, ("classify", "regress")):
        task.model_spec.name, task.model_spec.signature_name = TF2, signature
    with pytest.raises(grpc.RpcError) as error:
        server.predictions.MultiInference(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "Input tensor must be the same for all Signatures."


# -- errors, metrics, config reload --------------------------------------------------------


def test_errors_are_tf_servings(server):
    missing = server.post("/v1/models/half:predict", {"instances": [1.0, 5.0]})  # api_rest.md, verbatim
    assert (missing.status_code, missing.json()) == (404, {"error": "Servable not found for request: Latest(half)"})
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = TF1, "nope"
    with pytest.raises(grpc.RpcError) as error:
        server.predictions.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # predict_util.cc RunPredict
    assert error.value.details() == 'Serving signature key "nope" not found.'
    wrong = server.post(f"/v1/models/{TF1}:classify", {"signature_name": "serving_default", "examples": [{"x": 1.0}]})
    assert wrong.status_code == 400 and wrong.json()["error"] == (
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict"
    )


def test_monitoring_config_serves_tf_serving_metrics(server):
    server.post(f"/v1/models/{TF1}:predict", {"instances": [1.0]})
    text = server.get("/monitoring/prometheus/metrics").text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="half_plus_two",API="Predict",entrypoint="REST"' in text


def _wait_status(server: Server, name: str, state: str) -> None:
    for _ in range(240):
        response = server.get(f"/v1/models/{name}")
        if response.status_code == 200 and response.json()["model_version_status"][0]["state"] == state:
            return
        time.sleep(0.25)
    pytest.fail(f"{name} never reached {state}: {response.text}")


def test_model_config_file_is_polled(server):
    with open(os.path.join(server.root, "models.config"), "w") as f:
        f.write(_models_config([(TF1, server.tf1_base), (TF2, server.tf2_base), ("again", server.tf1_base)]))
    _wait_status(server, "again", "AVAILABLE")
    assert server.post("/v1/models/again/versions/123:predict", {"instances": [4.0]}).json() == {"predictions": [4.0]}


def _reload(server: Server, labels: dict[str, int]) -> model_management_pb2.ReloadConfigResponse:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(_models_config([(TF1, server.tf1_base), (TF2, server.tf2_base)], labels), request.config)
    return server.models.HandleReloadConfigRequest(request, timeout=120)


def test_handle_reload_config_request(server):
    # model_service_impl.cc: OK answers status {error_code: OK}; a failed reload is the call's status.
    ok = model_management_pb2.ReloadConfigResponse()
    ok.status.SetInParent()  # status set, with error_code OK and no message
    assert _reload(server, {"stable": 123}) == ok
    assert server.post(f"/v1/models/{TF1}/labels/stable:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
    _wait_status(server, "again", "END")  # dropped from the config: unloaded
    with pytest.raises(grpc.RpcError) as error:
        _reload(server, {"stable": 7})  # moving a label to a version that is not available
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == (
        "Request to assign label to version 7 of model half_plus_two, which is not currently available for inference"
    )
    # --allow_version_labels_for_unavailable_models: a new label may point at a version still to come.
    assert _reload(server, {"stable": 123, "canary": 7}).status.error_code == 0
    canary = server.post(f"/v1/models/{TF1}/labels/canary:predict", {"instances": [1.0]})
    assert (canary.status_code, canary.json()) == (404, {"error": "Servable not found for request: Specific(half_plus_two, 7)"})
    unknown = server.post(f"/v1/models/{TF1}/labels/beta:predict", {"instances": [1.0]})
    assert (unknown.status_code, unknown.json()) == (400, {"error": "Unrecognized servable version label: beta"})
