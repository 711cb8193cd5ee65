"""TF Serving REST contract: the documented request/response shapes, and clear 4xx for bad input."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serving extra (fastapi) is not installed")
from fastapi.testclient import TestClient

from vispipe.serving.app import create_app
from vispipe.serving.config import LimitsConfig, ServerConfig
from vispipe.serving.models_config import ModelSpec, VersionPolicy
from vispipe.serving.testing import encode_png, write_test_model

BLANK = np.zeros((4, 4, 1), np.uint8).tolist()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "toy")
    write_test_model(base, 1)
    write_test_model(base, 2)
    config = ServerConfig(
        models=[ModelSpec("toy", base, VersionPolicy("all"), {"stable": 1, "canary": 2})],
        grpc_port=None,
        poll_interval_s=0,
        limits=LimitsConfig(max_body_bytes=256 * 1024, max_instances=16),
    )
    app = create_app(config)
    with TestClient(app) as test_client:
        assert app.state.store.wait_ready(60)
        yield test_client


def test_model_status_has_tf_serving_shape(client):
    body = client.get("/v1/models/toy").json()
    # Newest first: TF Serving's ServableStateMonitor::VersionMap is ordered by std::greater.
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    assert client.get("/v1/models/toy/versions/1").json()["model_version_status"][0]["version"] == "1"
    # GetModelStatusImpl only narrows by version; a label answers every version, as in TF Serving.
    assert client.get("/v1/models/toy/labels/canary").json() == body


def test_metadata_lists_signature_defs(client):
    body = client.get("/v1/models/toy/versions/1/metadata").json()
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in default["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "4", "4", "1"]
    assert default["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"


def test_predict_row_format_returns_predictions_per_instance(client):
    body = client.post("/v1/models/toy:predict", json={"instances": [BLANK, BLANK]}).json()
    assert len(body["predictions"]) == 2
    assert set(body["predictions"][0]) == {"probabilities", "label"}
    # The latest version (2) answers without a version; a blank image's top class is version % 3.
    assert body["predictions"][0]["label"] == "class_2"
    assert client.post("/v1/models/toy/versions/1:predict", json={"instances": [BLANK]}).json()["predictions"][0]["label"] == "class_1"
    assert client.post("/v1/models/toy/labels/stable:predict", json={"instances": [BLANK]}).json()["predictions"][0]["label"] == "class_1"


def test_predict_columnar_format_returns_outputs(client):
    body = client.post("/v1/models/toy:predict", json={"inputs": [BLANK]}).json()
    assert set(body["outputs"]) == {"probabilities", "label"}
    assert np.array(body["outputs"]["probabilities"]).shape == (1, 3)
    named = client.post("/v1/models/toy:predict", json={"inputs": {"images": [BLANK, BLANK]}}).json()
    assert np.array(named["outputs"]["probabilities"]).shape == (2, 3)


def test_predict_named_inputs_and_signature_name(client):
    rows = client.post(
        "/v1/models/toy:predict",
        json={"signature_name": "pair", "instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [0, 1], "b": [2, 2]}]},
    ).json()
    assert rows == {"predictions": [{"sum": [4.0, 6.0], "product": [3.0, 8.0]}, {"sum": [2.0, 3.0], "product": [0.0, 2.0]}]}
    columns = client.post(
        "/v1/models/toy:predict", json={"signature_name": "pair", "inputs": {"a": [[1, 2]], "b": [[3, 4]]}}
    ).json()
    assert columns == {"outputs": {"sum": [[4.0, 6.0]], "product": [[3.0, 8.0]]}}


def _example(image: np.ndarray) -> dict:
    return {"image": {"b64": base64.b64encode(encode_png(image)).decode()}}


def test_b64_binary_values_reach_string_inputs(client):
    png = {"b64": base64.b64encode(encode_png(np.zeros((4, 4, 1), np.uint8))).decode()}
    import tensorflow as tf

    serialized = tf.train.Example(
        features=tf.train.Features(feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[base64.b64decode(png["b64"])]))})
    ).SerializeToString()
    body = client.post(
        "/v1/models/toy:predict",
        json={"signature_name": "classify", "instances": [{"b64": base64.b64encode(serialized).decode()}]},
    ).json()
    assert body["predictions"][0]["classes"] == ["class_0", "class_1", "class_2"]
    assert np.argmax(body["predictions"][0]["scores"]) == 2


def test_classify_returns_label_score_pairs(client):
    body = client.post("/v1/models/toy/versions/1:classify", json={"examples": [_example(np.zeros((4, 4, 1), np.uint8))] * 2}).json()
    assert len(body["results"]) == 2
    labels = [pair[0] for pair in body["results"][0]]
    scores = [pair[1] for pair in body["results"][0]]
    assert labels == ["class_0", "class_1", "class_2"]
    assert np.argmax(scores) == 1 and abs(sum(scores) - 1) < 1e-5


def test_classify_image_multipart_and_raw_give_top_k(client):
    png = encode_png(np.zeros((8, 8, 1), np.uint8))  # resized to the model's 4x4
    multipart = client.post("/v1/models/toy/versions/1:classify_image?top_k=2", files={"image": ("x.png", png, "image/png")})
    assert multipart.status_code == 200
    predictions = multipart.json()["predictions"]
    assert [p["label"] for p in predictions][0] == "class_1" and len(predictions) == 2
    assert predictions[0]["probability"] >= predictions[1]["probability"]
    raw = client.post("/v1/models/toy:classify_image", content=png, headers={"content-type": "image/png"})
    assert raw.json()["predictions"][0]["label"] == "class_2"
    assert len(raw.json()["predictions"]) == 3  # top_k 5, capped at the 3 classes


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/models/nope", 404),
        ("/v1/models/toy/versions/9", 404),
        ("/v1/models/nope/metadata", 404),
        ("/v1/models/toy/labels/nolabel/metadata", 400),  # "Unrecognized servable version label"
        ("/v1/models/toy/versions/x1", 400),  # TF Serving: "Malformed request"
        ("/v1/models/toy/versions/%C2%B2", 400),  # "²" passes str.isdigit
        ("/v1/models/..%2F..%2Fetc", 400),
        ("/v1/models", 400),  # "Missing model name in request."
    ],
)
def test_unknown_or_malformed_model_version_label_get_tf_serving_status(client, path, status):
    response = client.get(path)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


MALFORMED = [
    ("bad json", b"{not json", 400),
    ("not an object", b"[1, 2]", 400),
    ("both formats", json.dumps({"instances": [BLANK], "inputs": [BLANK]}).encode(), 400),
    ("neither format", b"{}", 400),
    ("empty instances", b'{"instances": []}', 400),
    ("wrong shape", json.dumps({"instances": [[1, 2, 3]]}).encode(), 400),
    ("ragged", json.dumps({"instances": [BLANK, [[1]]]}).encode(), 400),
    ("wrong dtype", json.dumps({"instances": [[[["a"]] * 4] * 4]}).encode(), 400),
    ("out of range uint8", json.dumps({"instances": [np.full((4, 4, 1), 300).tolist()]}).encode(), 400),
    ("invalid b64", json.dumps({"signature_name": "classify", "instances": [{"b64": "!!!"}]}).encode(), 400),
    ("unknown signature", json.dumps({"signature_name": "nope", "instances": [BLANK]}).encode(), 400),
    ("signature not a string", json.dumps({"signature_name": 3, "instances": [BLANK]}).encode(), 400),
    ("unknown named input", json.dumps({"inputs": {"pixels": [BLANK]}}).encode(), 400),
    ("too many instances", json.dumps({"instances": [BLANK] * 17}).encode(), 400),
    ("deep nesting", b"[" * 100000 + b"]" * 100000, 400),
    ("huge payload", b'{"instances": [' + b"0," * 200000 + b"0]}", 413),
    ("bad utf-8", b'{"instances": "\xff\xfe"}', 400),
    ("nan", b'{"instances": [NaN]}', 400),
]


@pytest.mark.parametrize("name, body, status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_predict_bodies_get_a_clear_4xx(client, name, body, status):
    response = client.post("/v1/models/toy:predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error and "Traceback" not in error and "File \"" not in error


@pytest.mark.parametrize(
    "body",
    [
        {"examples": []},
        {"examples": [{"image": {"b64": "%%"}}]},
        {"examples": [{"image": [1, "a"]}]},
        {"examples": [{"image": {"b64": base64.b64encode(b"not a png").decode()}}]},
        {"examples": [3]},
        {"examples": [{"x": 1}], "context": []},
    ],
)
def test_malformed_classify_bodies_get_400(client, body):
    response = client.post("/v1/models/toy:classify", json=body)
    assert response.status_code == 400
    assert "Traceback" not in response.json()["error"]


def test_non_image_uploads_get_400_or_415(client):
    not_image = client.post("/v1/models/toy:classify_image", files={"image": ("x.txt", b"hello", "text/plain")})
    assert not_image.status_code == 400
    assert "decode" in not_image.json()["error"]
    wrong_type = client.post("/v1/models/toy:classify_image", content=b"hello", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    no_file = client.post("/v1/models/toy:classify_image", files={"field": (None, "x")})
    assert no_file.status_code == 400
    bad_k = client.post("/v1/models/toy:classify_image?top_k=0", content=encode_png(np.zeros((4, 4, 1), np.uint8)),
                        headers={"content-type": "image/png"})
    assert bad_k.status_code == 400


def test_metrics_count_requests_batches_and_versions(client):
    client.post("/v1/models/toy:predict", json={"instances": [BLANK]})
    client.post("/v1/models/nope:predict", json={"instances": [BLANK]})
    text = client.get("/metrics").text
    assert 'vispipe_serving_requests_total{api="predict",model="toy",status="200",version="2"}' in text
    assert 'vispipe_serving_requests_total{api="predict",model="(unknown)",status="404",version="none"}' in text
    assert 'model="nope"' not in text
    assert 'vispipe_serving_request_latency_seconds_bucket{api="predict"' in text
    assert 'vispipe_serving_batch_size_count{model="toy",signature="serving_default",version="2"}' in text
    assert 'vispipe_serving_loaded_versions{model="toy"} 2.0' in text
    assert 'vispipe_serving_queue_depth{model="toy",version="1"} 0.0' in text


def test_health_ready_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": {"toy": [1, 2]}}
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/models/{model_name}:predict" in paths
    assert "/v1/models/{model_name}/labels/{label}:classify" in paths


def _asgi_post(route, path: str, body: bytes) -> tuple[int | None, bytes]:
    """One POST through the raw ASGI `route`; (status, body), status None when nothing was sent."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": [], "query_string": b""}
    asyncio.run(route(scope, receive, send))
    if not sent:
        return None, b""
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_predict_route_answers_predict_urls_itself_and_passes_on_the_rest(client):
    """The hot path answers :predict (as the FastAPI route does) and leaves any other URL to FastAPI."""
    from vispipe.serving.rest_core import PredictRoute

    passed: list[str] = []

    async def fastapi_stand_in(scope, receive, send):
        passed.append(scope["path"])

    state = client.app.state
    route = PredictRoute(fastapi_stand_in, state.store, state.metrics, state.config.limits)
    body = json.dumps({"instances": [BLANK]}).encode()
    for path in ("/v1/models/toy:predict", "/v1/models/toy/versions/1:predict", "/v1/models/toy/labels/canary:predict"):
        status, text = _asgi_post(route, path, body)
        assert status == 200 and json.loads(text) == client.post(path, content=body).json()
    assert _asgi_post(route, "/v1/models/nope:predict", body)[0] == 404
    assert _asgi_post(route, "/v1/models/toy:predict", b"{not json")[0] == 400
    assert passed == []
    for path in ("/v1/models/toy:classify", "/v1/models/toy/versions/x1:predict", "/v1/models/a:b:predict"):
        assert _asgi_post(route, path, body) == (None, b"")
    assert passed == ["/v1/models/toy:classify", "/v1/models/toy/versions/x1:predict", "/v1/models/a:b:predict"]


def test_made_up_model_names_share_one_metrics_series():
    """A client sending requests for ever new model names must not grow the metrics without bound."""
    from vispipe.serving.metrics import ServingMetrics

    metrics = ServingMetrics(loaded=lambda: {"toy": [1], "cold": []})
    for i in range(200):
        metrics.observe_request(f"made-up-{i}", "none", "predict", "NOT_FOUND", 0.001)
    metrics.observe_request("cold", "none", "predict", "NOT_FOUND", 0.001)  # configured, nothing loaded yet
    text = metrics.render().decode()
    assert "made-up" not in text
    assert 'vispipe_serving_requests_total{api="predict",model="(unknown)",status="404",version="none"} 200.0' in text
    assert ':tensorflow:serving:request_count{model_name="(unknown)",status="NOT_FOUND"} 200' in text
    assert 'vispipe_serving_requests_total{api="predict",model="cold",status="404",version="none"} 1.0' in text


def test_an_unexpected_error_is_answered_500_and_counted(client):
    """A bug inside an API call answers TF Serving's 500 and shows in the request metrics; running out of memory, 429."""
    import asyncio

    from vispipe.serving.rest_core import INTERNAL_ERROR, Target, answer

    async def broken(servable) -> str:
        raise RuntimeError("a bug")

    state = client.app.state
    assert asyncio.run(answer(state.store, state.metrics, Target("toy"), "predict", broken)) == (500, INTERNAL_ERROR)
    text = client.get("/metrics").text
    assert 'vispipe_serving_requests_total{api="predict",model="toy",status="500",version="2"} 1.0' in text
    assert ':tensorflow:serving:request_count{model_name="toy",status="INTERNAL"} 1' in text

    async def too_big(servable) -> str:
        raise MemoryError

    status, text = asyncio.run(answer(state.store, state.metrics, Target("toy"), "predict", too_big))
    assert status == 429 and "more memory" in json.loads(text)["error"]
