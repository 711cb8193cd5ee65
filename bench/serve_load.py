"""Serving load test: vispipe's batching server against a naive FastAPI `model.predict` endpoint.

Both servers run as subprocesses on loopback ports and serve the same MNIST LeNet
(trained here on an MNIST PNG subset if no export is given, and saved both as a
.keras file and as a TF Serving SavedModel). N keep-alive clients each send
single-image TF Serving REST requests (`{"instances": [image]}`) for a bounded
time; then one JSON object is printed:

    {"vispipe": {"throughput_rps", "p50_ms", "p95_ms", "p99_ms", "errors"},
     "naive": {...}, "throughput_ratio": vispipe / naive}

With --hot-swap, version 2 of the model is dropped into the base path a third of
the way through the vispipe run and a broken version 3 two thirds through; a
`hot_swap` entry reports when version 2 started serving and the state of 3.

Usage:

    python bench/serve_load.py --clients 32 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"  # loopback only
MAX_CLIENTS = 256
MAX_DURATION_S = 120.0


def _shared_datasets() -> str:
    return os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(os.path.dirname(REPO), "shared", "datasets")


def _mnist_subset(dest: str, per_class: int) -> str:
    """Unpacks `per_class` train and test PNGs per digit; returns the mnist-png folder."""
    archive = os.path.join(_shared_datasets(), "mnist-png.tar.gz")
    if not os.path.isfile(archive):
        sys.exit(f"serve_load: MNIST archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and taken.get("/".join(parts[:3]), 0) < per_class:
                taken["/".join(parts[:3])] = taken.get("/".join(parts[:3]), 0) + 1
                members.append(member)
        tar.extractall(dest, members=members, filter="data")
    return os.path.join(dest, "mnist-png")


def _load_split(root: str, split: str):
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for digit in range(10):
        folder = os.path.join(root, split, str(digit))
        for name in sorted(os.listdir(folder)):
            images.append(np.asarray(Image.open(os.path.join(folder, name)).convert("L"))[..., None])
            labels.append(digit)
    return np.stack(images).astype("uint8"), np.array(labels)


def _export(model, path: str) -> None:
    """SavedModel in TF Serving layout: serving_default (uint8 images) and classify (tf.Examples)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    labels = tf.constant([str(d) for d in range(10)])
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images")])
    def serving_default(images):
        probabilities = module.model(tf.cast(images, tf.float32), training=False)
        return {"probabilities": probabilities, "label": tf.gather(labels, tf.argmax(probabilities, axis=1))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        encoded = tf.io.parse_example(inputs, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
        images = tf.map_fn(
            lambda data: tf.reshape(tf.io.decode_png(data, channels=1), [28, 28, 1]),
            encoded,
            fn_output_signature=tf.TensorSpec([28, 28, 1], tf.uint8),
        )
        scores = module.model(tf.cast(images, tf.float32), training=False)
        return {"classes": tf.tile(labels[None], [tf.shape(scores)[0], 1]), "scores": scores}

    staging = path + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(module, staging, signatures={"serving_default": serving_default, "classify": classify})
    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(staging, "saved_model.pb")
    with open(pb, "rb") as f:
        proto.ParseFromString(f.read())
    proto.meta_graphs[0].signature_def["classify"].method_name = "tensorflow/serving/classify"
    with open(pb, "wb") as f:
        f.write(proto.SerializeToString())
    os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
    with open(os.path.join(staging, "assets", "labels.txt"), "w") as f:
        f.write("\n".join(str(d) for d in range(10)) + "\n")
    os.replace(staging, path)


def prepare_model(work: str) -> tuple[str, str, str, list]:
    """Trains the DIGITS LeNet on an MNIST subset (once, cached in `work`).

    Returns:
        (SavedModel base path holding version 1, .keras path, staged version 2 folder, test images as lists).
    """
    base = os.path.join(work, "models", "lenet")
    keras_path = os.path.join(work, "lenet.keras")
    staged_v2 = os.path.join(work, "staged", "2")
    mnist = os.path.join(work, "mnist-png")
    if not os.path.isdir(mnist):
        _mnist_subset(work, per_class=300)
    if not os.path.isfile(os.path.join(base, "1", "saved_model.pb")):
        import keras
        from keras import layers

        x, y = _load_split(mnist, "train")
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Rescaling(1 / 255.0),
                layers.Conv2D(20, 5, name="conv1"),
                layers.MaxPooling2D(2),
                layers.Conv2D(50, 5, name="conv2"),
                layers.MaxPooling2D(2),
                layers.Flatten(),
                layers.Dense(500, activation="relu"),
                layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x.astype("float32"), y, batch_size=64, epochs=3, verbose=0)
        model.save(keras_path)
        os.makedirs(base, exist_ok=True)
        _export(model, os.path.join(base, "1"))
        os.makedirs(os.path.dirname(staged_v2), exist_ok=True)
        _export(model, staged_v2)
    test_x, _ = _load_split(mnist, "test")
    rng = random.Random(0)
    picks = [test_x[i].tolist() for i in rng.sample(range(len(test_x)), 64)]
    return base, keras_path, staged_v2, picks


# -- naive server (run as a subprocess) ------------------------------------------------------


def naive_app(keras_path: str):
    """A FastAPI endpoint that calls `model.predict` per request, as tutorials do."""
    import keras
    import numpy as np
    from fastapi import FastAPI

    model = keras.models.load_model(keras_path)
    app = FastAPI()

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, body: dict):
        images = np.asarray(body["instances"], dtype="float32")
        return {"predictions": model.predict(images, verbose=0).tolist()}

    return app


# -- load generator --------------------------------------------------------------------------


async def _client(port: int, path: str, bodies: list[bytes], stop_at: float, latencies: list, errors: list) -> None:
    """One keep-alive HTTP/1.1 client sending requests until `stop_at`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    i = random.randrange(len(bodies))
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200 or b'"predictions"' not in payload:
                errors.append(status)
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        errors.append(repr(error))
    finally:
        writer.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


async def _load(port: int, path: str, bodies: list[bytes], clients: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: list = []
    stop_at = time.perf_counter() + duration
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, path, bodies, stop_at, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ok = len(latencies) - len(errors)
    return {
        "throughput_rps": round(ok / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 2),
        "p95_ms": round(_percentile(latencies, 95) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 2),
        "errors": len(errors),
        "requests": len(latencies),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_ready(port: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"serve_load: server on port {port} exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"serve_load: server on port {port} not ready after {timeout}s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _model_status(port: int) -> list:
    import http.client

    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    connection.request("GET", "/v1/models/lenet")
    return json.loads(connection.getresponse().read())["model_version_status"]


async def _hot_swap(port: int, base: str, staged_v2: str, duration: float) -> dict:
    """Drops version 2 in at 1/3 of the run, a broken version 3 at 2/3; watches the status."""
    report: dict = {}
    await asyncio.sleep(duration / 3)
    copy = os.path.join(base, ".incoming-2")
    shutil.copytree(staged_v2, copy)
    os.rename(copy, os.path.join(base, "2"))  # appears complete, as an export would
    dropped = time.perf_counter()
    while time.perf_counter() - dropped < duration / 3:
        states = {s["version"]: s["state"] for s in await asyncio.to_thread(_model_status, port)}
        if states.get("2") == "AVAILABLE" and states.get("1") == "END":
            report["version_2_serving_after_s"] = round(time.perf_counter() - dropped, 2)
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(max(0.0, dropped + duration / 3 - time.perf_counter()))
    os.makedirs(os.path.join(base, "3"))
    with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    await asyncio.sleep(min(3.0, duration / 4))
    report["status_after_broken_version_3"] = await asyncio.to_thread(_model_status, port)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--duration", type=float, default=20.0, help=f"seconds per server (at most {MAX_DURATION_S})")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before timing")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "vispipe-serve-bench"),
                        help="where the LeNet and MNIST subset are cached")
    parser.add_argument("--hot-swap", action="store_true", help="drop in version 2, then a broken 3, during the vispipe run")
    parser.add_argument("--naive-server", nargs=2, metavar=("KERAS", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.naive_server:
        import uvicorn

        uvicorn.run(naive_app(args.naive_server[0]), host=HOST, port=int(args.naive_server[1]), log_level="warning")
        return 0
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --duration 0..{MAX_DURATION_S}s")

    base, keras_path, staged_v2, images = prepare_model(args.work_dir)
    for extra in ("2", "3"):
        shutil.rmtree(os.path.join(base, extra), ignore_errors=True)
    bodies = [json.dumps({"instances": [image]}).encode() for image in images]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results: dict = {}
    servers = {
        "naive": [sys.executable, os.path.abspath(__file__), "--naive-server", keras_path],
        "vispipe": [sys.executable, "-m", "serving", "--model-base-path", base, "--model-name", "lenet",
                    "--grpc-port", "-1", "--poll-interval", "0.5", "--port"],
    }
    for name, command in servers.items():
        port = _free_port()
        process = subprocess.Popen(command + [str(port)], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(port, process)
            path = "/v1/models/lenet:predict"
            asyncio.run(_load(port, path, bodies, args.clients, args.warmup))

            async def timed() -> dict:
                load = asyncio.create_task(_load(port, path, bodies, args.clients, args.duration))
                swap = None
                if name == "vispipe" and args.hot_swap:
                    swap = asyncio.create_task(_hot_swap(port, base, staged_v2, args.duration))
                result = await load
                if swap is not None:
                    result["hot_swap"] = await swap
                return result

            results[name] = asyncio.run(timed())
        finally:
            _stop(process)
    hot_swap = results["vispipe"].pop("hot_swap", None)
    report = {
        "vispipe": results["vispipe"],
        "naive": results["naive"],
        "throughput_ratio": round(results["vispipe"]["throughput_rps"] / max(results["naive"]["throughput_rps"], 1e-9), 2),
        "clients": args.clients,
        "duration_s": args.duration,
        "cpu_count": os.cpu_count(),
    }
    if hot_swap is not None:
        report["hot_swap"] = hot_swap
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
