"""gRPC: tensorflow-serving-api's own client stubs get the same answers as REST."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api is not installed")
import grpc
import tensorflow as tf
from fastapi.testclient import TestClient
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from vispipe.serving.app import create_app
from vispipe.serving.config import ServerConfig
from vispipe.serving.models_config import ModelSpec, VersionPolicy
from vispipe.serving.testing import encode_png, write_test_model

TOKEN = "grpc-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "toy")
    write_test_model(base, 1)
    write_test_model(base, 2)
    config = ServerConfig(
        models=[ModelSpec("toy", base, VersionPolicy("all"), {"stable": 1})],
        grpc_port=0,
        poll_interval_s=0,
        auth_token=TOKEN,
    )
    app = create_app(config)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert app.state.store.wait_ready(60)
        channel = grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}")
        yield client, channel
        channel.close()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def test_grpc_predict_matches_rest(server):
    client, channel = server
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.model_spec.version.value = 1
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30, metadata=AUTH)
    grpc_probabilities = tf.make_ndarray(response.outputs["probabilities"])
    rest = client.post("/v1/models/toy/versions/1:predict", json={"instances": images.tolist()}).json()
    np.testing.assert_allclose(grpc_probabilities, [p["probabilities"] for p in rest["predictions"]], rtol=1e-6)
    assert [s.decode() for s in tf.make_ndarray(response.outputs["label"])] == [p["label"] for p in rest["predictions"]]
    assert (response.model_spec.name, response.model_spec.version.value) == ("toy", 1)


def test_grpc_predict_by_label_with_output_filter(server):
    _, channel = server
    request = predict_pb2.PredictRequest(output_filter=["label"])
    request.model_spec.name = "toy"
    request.model_spec.version_label = "stable"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 1), np.uint8)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30, metadata=AUTH)
    assert list(response.outputs) == ["label"]
    assert tf.make_ndarray(response.outputs["label"]).tolist() == [b"class_1"]


def test_grpc_classify_matches_rest(server):
    client, channel = server
    png = encode_png(np.zeros((4, 4, 1), np.uint8))
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "toy"
    example = request.input.example_list.examples.add()
    example.features.feature["image"].bytes_list.value.append(png)
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=30, metadata=AUTH)
    pairs = [(c.label, c.score) for c in response.result.classifications[0].classes]
    import base64

    rest = client.post("/v1/models/toy:classify", json={"examples": [{"image": {"b64": base64.b64encode(png).decode()}}]}).json()
    assert [p[0] for p in pairs] == [p[0] for p in rest["results"][0]]
    np.testing.assert_allclose([p[1] for p in pairs], [p[1] for p in rest["results"][0]], rtol=1e-6)


def test_grpc_metadata_and_status(server):
    _, channel = server
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "toy"
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30, metadata=AUTH)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "classify", "pair"} <= set(sig_map.signature_def)
    assert response.model_spec.version.value == 2

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "toy"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30, metadata=AUTH)
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]  # newest first


@pytest.mark.parametrize(
    "metadata, code",
    [((), grpc.StatusCode.UNAUTHENTICATED), ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED)],
)
def test_grpc_requires_the_token(server, metadata, code):
    _, channel = server
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    with pytest.raises(grpc.RpcError) as error:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30, metadata=metadata)
    assert error.value.code() == code


def test_grpc_errors_have_tf_serving_codes(server):
    _, channel = server
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    unknown = predict_pb2.PredictRequest()
    unknown.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(unknown, timeout=30, metadata=AUTH)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    wrong_shape = predict_pb2.PredictRequest()
    wrong_shape.model_spec.name = "toy"
    wrong_shape.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 5, 5, 1), np.uint8)))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(wrong_shape, timeout=30, metadata=AUTH)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected shape" in error.value.details()
