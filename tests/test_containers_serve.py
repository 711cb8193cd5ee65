"""The serving image, run the way `Deployment/vispipe-serve` (k8s/base/serve.yaml) runs it.

Builds the Dockerfile's `serve` target (scripts/images.sh, as `make images`),
exports a LeNet trained on real MNIST digits, and starts the container with
the Deployment's arguments, user, read-only root file system and read-only
export volume at the Deployment's mount path (tests/k8s_podman.py). Its answers
are compared with the in-process server's over the same export; it must turn
healthy, and drain an in-flight request on SIGTERM before exiting 0.

`make test` (so CI) runs it; it skips, saying why, without podman/docker or
base images. Cost on the shared 2-core machine at load average 11: the build
with no layer and no wheel cached 6.1 minutes (TensorFlow's wheel downloaded;
every layer cached: 11 s); the tests 2.1 minutes (a 2-epoch LeNet export
included).
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import shutil
import socket
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api is not installed")
import grpc
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import extract_subset
from k8s_podman import (Volumes, base_image, build_image, find, host_path,
                        image_size, run_container, run_once, wait_for)
from ports import free_ports
from vispipe.cli import main
from vispipe.deploy import render
from vispipe.serving import ModelSpec, ServerConfig
from vispipe.serving.app import create_app
from vispipe.serving.cli import add_serve_parser, config_from_args

# Among the first files of the run (see conftest): its build takes minutes, and
# the train-cpu file, which reuses the TensorFlow stage it builds, comes later.
pytestmark = pytest.mark.slow

# What the serving image must not hold (training, datasets, plotting, export
# converters, the UI, tuning, tracking) and the goal for all beside TensorFlow.
NOT_IN_SERVE = ("keras", "tensorboard", "tensorflow-datasets", "pyarrow", "scipy", "scikit-learn",
                "matplotlib", "pillow", "horovod", "tensorflowjs", "coremltools", "tf-keras",
                "jinja2", "optuna", "mlflow-skinny", "pip")
MAX_BESIDE_TENSORFLOW_MB = 150
READY_TIMEOUT_S = 240
IMAGES = 8


@pytest.fixture(scope="module")
def serve_image():
    return build_image("serve")


@pytest.fixture(scope="module")
def mnist_export(mnist_archive, tmp_path_factory):
    """A real LeNet SavedModel export and MNIST test images (PNG bytes, arrays)."""
    root = tmp_path_factory.mktemp("serve-export")
    extract_subset(mnist_archive, str(root / "src"), per_class=20)
    digits = root / "src" / "mnist-png"
    assert main(["dataset", "create", "--train-dir", str(digits / "train"), "--test-dir",
                 str(digits / "test"), "--out", str(root / "ds"), "--size", "28x28",
                 "--channels", "1", "--val-percent", "20", "--quiet"]) == 0
    assert main(["train", "--dataset", str(root / "ds"), "--run", str(root / "run"),
                 "--model", "lenet", "--epochs", "2", "--quiet"]) == 0
    assert main(["export", "--run", str(root / "run"), "--formats", "savedmodel",
                 "--out", str(root / "export")]) == 0
    (saved_model,) = glob.glob(str(root / "export" / "**" / "saved_model.pb"), recursive=True)
    model_dir = os.path.dirname(os.path.dirname(saved_model))  # <model>/<version>/saved_model.pb
    pngs = sorted(glob.glob(str(digits / "test" / "*" / "*.png")))[::20][:IMAGES]
    images = np.stack([np.asarray(Image.open(p))[..., None] for p in pngs]).astype(np.uint8)
    return model_dir, [open(p, "rb").read() for p in pngs], images


@pytest.fixture(scope="module")
def deployment(mnist_export, tmp_path_factory):
    """The Deployment's pod, its volumes with the export where it serves from, the model."""
    docs = render(overlay="cpu")
    pod = find(docs, "Deployment", "vispipe-serve")["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    volumes = Volumes(claims=dict.fromkeys(claims, str(tmp_path_factory.mktemp("pvc"))),
                      docs=docs, work_dir=str(tmp_path_factory.mktemp("volumes")))
    # The container's args parsed by the server's own parser, with the files
    # they name (the models.config ConfigMap) read from their host folders.
    args = []
    for arg in pod["containers"][0]["args"]:
        flag, eq, value = arg.rpartition("=") if arg.startswith("-") else ("", "", arg)
        on_mount = value.startswith("/") and value != "/"
        args.append(flag + eq + (host_path(pod, volumes, value) if on_mount else value))
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="verb"))
    (model,) = config_from_args(parser.parse_args(["serve", *args])).model_specs()
    shutil.copytree(mnist_export[0], host_path(pod, volumes, model.base_path))
    return pod, volumes, model


@pytest.fixture(scope="module")
def in_process(deployment, mnist_export):
    """The reference: the in-process server (REST client, gRPC channel) over the same export."""
    name = deployment[2].name
    app = create_app(ServerConfig(models=[ModelSpec(name, mnist_export[0])], grpc_port=0,
                                  poll_interval_s=0))
    with TestClient(app) as client:
        assert app.state.store.wait_ready(120)
        channel = grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}")
        yield client, channel
        channel.close()


@pytest.fixture(scope="module")
def server(serve_image, deployment):
    """The serving container as the Deployment runs it, once ready; timing in `.timing`."""
    pod, volumes, _ = deployment
    container_spec = pod["containers"][0]
    named_ports = {p["name"]: p["containerPort"] for p in container_spec["ports"]}
    local = dict(zip(named_ports, free_ports(len(named_ports))))
    # Network stand-in: the image binds $VISPIPE_SERVE_HOST (0.0.0.0, the pod's
    # own network); on the host's network, loopback.
    container = run_container(pod, serve_image.tag, volumes, role="serve",
                              ports={named_ports[n]: port for n, port in local.items()},
                              env={"VISPIPE_SERVE_HOST": "127.0.0.1"})
    probe = container_spec["readinessProbe"]["httpGet"]

    def ready() -> bool:
        assert container.running(), container.logs()
        return _get(local[probe["port"]], probe["path"])[0] == 200

    wait_for(ready, READY_TIMEOUT_S, "the readiness probe", interval=0.1)
    container.timing = {"start_to_ready_s": time.monotonic() - container.started_at}
    container.rest_port, container.grpc_port = local["http"], local["grpc"]
    yield container
    container.remove()


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _assert_same(got, expected, where="answer"):
    """Same structure and strings; numbers equal to float32 rounding."""
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected), where
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), where
    else:
        assert got == expected, where


def test_the_serving_image_holds_the_server_and_tensorflow_only(serve_image):
    script = (
        "import importlib.metadata as m, json, os\n"
        "names = sorted({d.metadata['Name'].lower() for d in m.distributions()})\n"
        "tf = m.distribution('tensorflow')\n"
        "tf_bytes = sum(os.path.getsize(tf.locate_file(f)) for f in tf.files"
        " if os.path.isfile(tf.locate_file(f)))\n"
        "node = [r for top in ('/opt', '/usr/local', '/home') for r, d, f in os.walk(top)"
        " if os.path.basename(r) == 'node_modules']\n"
        "print(json.dumps({'names': names, 'tf_bytes': tf_bytes, 'node_modules': node}))\n"
    )
    out = run_once(serve_image.tag, "-c", script, entrypoint="python")
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert "tensorflow" in found["names"] and "tensorflow-serving-api" in found["names"]
    assert not set(NOT_IN_SERVE) & set(found["names"]), set(NOT_IN_SERVE) & set(found["names"])
    assert not found["node_modules"], found["node_modules"]
    base_bytes = image_size(base_image("serve"))
    beside_mb = (serve_image.size_bytes - base_bytes - found["tf_bytes"]) / 1e6
    print(f"\n[serve] image {serve_image.size_bytes / 1e6:.0f} MB = base {base_bytes / 1e6:.0f} MB"
          f" + TensorFlow {found['tf_bytes'] / 1e6:.0f} MB + {beside_mb:.0f} MB beside it")
    assert beside_mb <= MAX_BESIDE_TENSORFLOW_MB
    # A verb whose extra the image lacks says so instead of breaking the CLI.
    ui = run_once(serve_image.tag, "ui", entrypoint="vispipe")
    assert ui.returncode == 2 and "pip install 'vispipe[ui]'" in ui.stderr, ui.stderr[-2000:]


def test_the_container_runs_non_root_with_a_read_only_export_and_turns_healthy(
    server, deployment
):
    pod, _, model = deployment
    assert server.exec("id", "-u").stdout.strip() == str(pod["securityContext"]["runAsUser"])
    write = server.exec("touch", os.path.join(model.base_path, "written"))
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    root_write = server.exec("touch", "/opt/written")
    assert root_write.returncode != 0 and "Read-only file system" in root_write.stderr
    start = time.monotonic()
    if not wait_for(server.healthcheck, 60, "the image's HEALTHCHECK", interval=1, fail=False):
        pytest.fail(f"HEALTHCHECK did not pass: {server.health_output}")
    assert server.health_status() == "healthy"
    print(f"\n[serve] start to ready (readiness probe): {server.timing['start_to_ready_s']:.1f} s;"
          f" HEALTHCHECK passed {time.monotonic() - start:.1f} s later")


def test_rest_answers_like_the_in_process_server(server, in_process, deployment, mnist_export):
    client, _ = in_process
    name = deployment[2].name
    _, pngs, images = mnist_export
    body = json.dumps({"instances": images.tolist()}).encode()
    status, got = _post(server.rest_port, f"/v1/models/{name}:predict", body, "application/json")
    assert status == 200, got
    expected = client.post(f"/v1/models/{name}:predict", content=body,
                           headers={"content-type": "application/json"}).json()
    _assert_same(got, expected, "predict")
    assert len(got["predictions"]) == IMAGES
    for png in pngs:
        path = f"/v1/models/{name}:classify_image?top_k=3"
        status, got = _post(server.rest_port, path, png, "image/png")
        assert status == 200, got
        expected = client.post(path, content=png, headers={"content-type": "image/png"}).json()
        _assert_same(got, expected, "classify_image")


def test_grpc_predict_answers_like_the_in_process_server(server, in_process, deployment,
                                                         mnist_export):
    client, reference_channel = in_process
    name = deployment[2].name
    images = mnist_export[2]
    signature = client.get(f"/v1/models/{name}/metadata").json()[
        "metadata"]["signature_def"]["signature_def"]["serving_default"]
    (input_name,) = signature["inputs"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images))
    answers = []
    for channel in (grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"), reference_channel):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answers.append(stub.Predict(request, timeout=60))
    got, expected = answers
    assert sorted(got.outputs) == sorted(expected.outputs)
    for key in expected.outputs:
        got_array = tf.make_ndarray(got.outputs[key])
        expected_array = tf.make_ndarray(expected.outputs[key])
        if expected_array.dtype.kind in "SUO":  # class names
            np.testing.assert_array_equal(got_array, expected_array, err_msg=key)
        else:
            np.testing.assert_allclose(got_array, expected_array, rtol=1e-5, atol=1e-7,
                                       err_msg=key)
    assert got.model_spec.name == name and got.model_spec.version.value == 1


def test_sigterm_drains_the_request_in_flight_and_exits_0(server, deployment, mnist_export):
    name = deployment[2].name
    body = json.dumps({"instances": mnist_export[2].tolist()}).encode()
    head = (f"POST /v1/models/{name}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=60) as sock:
        # Headers and half the body: the request is in flight when SIGTERM comes.
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(1.0)
        server.kill("TERM")

        def refuses_new_connections() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.rest_port), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True

        wait_for(refuses_new_connections, 30, "the server to stop accepting connections")
        sock.sendall(body[len(body) // 2:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split()[1] == b"200", response[:500]
    payload = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert len(payload["predictions"]) == len(mnist_export[2])
    assert server.wait(60) == 0, server.logs()
