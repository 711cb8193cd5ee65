"""The server process: auth, CORS, limits, timeouts, graceful shutdown, CLI, and no export imports."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from vispipe.serving.app import create_app
from vispipe.serving.cli import add_serve_parser, config_from_args
from vispipe.serving.config import BatchingConfig, LimitsConfig, ServerConfig
from vispipe.serving.models_config import ModelSpec
from vispipe.serving.testing import write_test_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLANK = np.zeros((4, 4, 1), np.uint8).tolist()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "toy")
    write_test_model(path, 1)
    return path


def _client(config: ServerConfig) -> TestClient:
    return TestClient(create_app(config))


def test_auth_token_guards_everything_but_healthz(base):
    config = ServerConfig(models=[ModelSpec("toy", base)], grpc_port=None, poll_interval_s=0, auth_token="s3cret")
    with _client(config) as client:
        assert client.app.state.store.wait_ready(60)
        assert client.get("/healthz").status_code == 200
        for path in ("/v1/models/toy", "/metrics", "/readyz", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 401 and "bearer" in response.json()["error"].lower()
        wrong = client.post("/v1/models/toy:predict", json={"instances": [BLANK]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post("/v1/models/toy:predict", json={"instances": [BLANK]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_cors_is_off_by_default_and_configurable(base):
    common = dict(models=[ModelSpec("toy", base)], grpc_port=None, poll_interval_s=0)
    with _client(ServerConfig(**common)) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://app.example"}).headers
    with _client(ServerConfig(**common, cors_origins=("http://app.example",))) as client:
        preflight = client.options(
            "/v1/models/toy:predict",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"


def test_request_timeout_answers_504(base):
    config = ServerConfig(
        models=[ModelSpec("toy", base)],
        grpc_port=None,
        poll_interval_s=0,
        batching=BatchingConfig(max_batch_size=8, batch_timeout_ms=3000),
        limits=LimitsConfig(request_timeout_s=0.2),
    )
    with _client(config) as client:
        assert client.app.state.store.wait_ready(60)
        response = client.post("/v1/models/toy:predict", json={"instances": [BLANK]})
        assert response.status_code == 504 and "timed out" in response.json()["error"]


def test_readyz_is_503_until_a_version_loads(tmp_path):
    config = ServerConfig(models=[ModelSpec("toy", str(tmp_path / "empty"))], grpc_port=None, poll_interval_s=0)
    with _client(config) as client:
        client.app.state.store.wait_ready(30)
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
        assert response.status_code == 503 and "toy" in response.json()["error"]


def test_graceful_shutdown_drains_in_flight_requests(base):
    # A long batch timeout keeps the request queued while shutdown starts.
    config = ServerConfig(
        models=[ModelSpec("toy", base)],
        grpc_port=None,
        poll_interval_s=0,
        batching=BatchingConfig(max_batch_size=8, batch_timeout_ms=1500),
    )
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=20))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.1)
    port = server.servers[0].sockets[0].getsockname()[1]
    assert app.state.store.wait_ready(60)
    result = {}

    def request():
        result["response"] = httpx.post(f"http://127.0.0.1:{port}/v1/models/toy:predict", json={"instances": [BLANK]}, timeout=30)

    client = threading.Thread(target=request)
    client.start()
    for _ in range(300):
        if app.state.store.queue_depths().get(("toy", 1)):
            break
        time.sleep(0.01)
    assert app.state.store.queue_depths()[("toy", 1)] == 1
    server.should_exit = True
    client.join(30)
    thread.join(30)
    assert result["response"].status_code == 200
    assert len(result["response"].json()["predictions"]) == 1
    assert not thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_serve_parser_builds_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(
        ["serve", "--model-base-path", str(tmp_path / "lenet"), "--version-policy", "latest:2",
         "--version-label", "stable=1", "--grpc-port", "-1", "--max-batch-size", "16", "--auth-token", "t"]
    )
    config = config_from_args(args)
    assert config.models[0].name == "lenet"
    assert config.models[0].version_policy.num_versions == 2
    assert config.models[0].version_labels == {"stable": 1}
    assert config.grpc_port is None and config.batching.max_batch_size == 16 and config.auth_token == "t"
    assert callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model-base-path", "x", "--version-label", "stable"])
    bad = parser.parse_args(["serve", "--model-base-path", str(tmp_path / "x"), "--model-name", "../etc"])
    with pytest.raises(ValueError, match="invalid model name"):
        config_from_args(bad)


def test_serving_runs_without_the_export_tools(base):
    # The serve image has TensorFlow, the server and its protos only: training code, the export
    # converters and the plotting/ML/dataset libraries are made unimportable here, as there.
    code = f"""
import sys, importlib.abc
BLOCKED = ('vispipe.train', 'vispipe.data', 'vispipe.models', 'vispipe.evaluate', 'vispipe.export', 'vispipe.ui',
           'matplotlib', 'sklearn', 'tensorflow_datasets', 'coremltools', 'tensorflowjs', 'jax', 'jaxlib',
           'tf_keras', 'horovod', 'PIL')
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + '.') for b in BLOCKED):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import argparse
import grpc, numpy as np, tensorflow as tf
from fastapi.testclient import TestClient
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from vispipe.serving.app import create_app
from vispipe.serving.cli import add_serve_parser, config_from_args
parser = argparse.ArgumentParser()
add_serve_parser(parser.add_subparsers())
config = config_from_args(parser.parse_args(['serve', '--model_name=toy', '--model_base_path={base}',
                                             '--port=0', '--rest_api_port=0', '--set', 'grpc_port=0']))
app = create_app(config)
with TestClient(app) as client:
    print(client.post('/v1/models/toy:predict', json={{'instances': [[[[0]] * 4] * 4]}}).status_code)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = 'toy'
    request.inputs['images'].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 1), np.uint8)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f'127.0.0.1:{{app.state.grpc_port}}'))
    print(len(stub.Predict(request, timeout=60).outputs))
print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in BLOCKED)))
"""
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["200", "2", "[]"]
