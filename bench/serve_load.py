"""Serving load test: vispipe's batching server against the servers a user would write.

All servers run as subprocesses on loopback ports with the same uvicorn
settings, one at a time, and serve the same model:

- `vispipe`: `python -m vispipe.serving` (dynamic batching) on the SavedModel;
- `direct`: a FastAPI endpoint that calls the SavedModel's `serving_default`
  concrete function on each request's tensor (no `model.predict`, no batching):
  what a competent engineer writes;
- `naive`: a FastAPI endpoint calling `model.predict` per request, as tutorials do;
- `http_floor`: the same FastAPI endpoint with no model at all: it parses the
  request (JSON to an array, with orjson as vispipe does) and returns a stored
  response of the same size;
- `http_floor_json`: the same floor parsing with the standard library's `json`
  (the floor of a server without a faster parser; `efficiency_vs_json_floor`).

Models (`--model`): `lenet`, the DIGITS LeNet trained here on an MNIST PNG
subset (28x28x1 bodies), or `mobilenet_v2`, Keras' MobileNetV2 at 224x224x3
with random weights (throughput does not depend on the weights; no download is
possible here), fed upscaled CIFAR-10 test images. N keep-alive clients each
send single-image TF Serving REST requests (`{"instances": [image]}`).

With `--grpc`, vispipe is also loaded over gRPC Predict (`vispipe_grpc`,
binary `tensor_content` bodies, one HTTP/2 channel), against the model ceiling
(`grpc_efficiency`) and the direct REST server (`grpc_ratio_vs_direct`).

Ceilings, measured in the same run: `offline_images_per_s` (the model alone,
batched concrete-function calls, the best of batch 1, 8 and 32) and
`http_floor_rps`. `efficiency` = vispipe throughput / min(the two ceilings).
Each server object has `throughput_rps`, `p50_ms`, `p99_ms`, `errors` and
`cpu_s_per_request` (the server process's CPU seconds over its requests) and
`main_thread_cpu_s_per_request` over REST (its main thread's, the event loop's: what
an async one-process Python server is bound by; vispipe's model runs on other threads).
One JSON object is printed; with several `--clients` counts, `by_clients`
holds one report per count (servers stay up between counts).

With --hot-swap, version 2 of the model is dropped into the base path a third of
the way through the vispipe run and a broken version 3 two thirds through; a
`hot_swap` entry reports when version 2 started serving and the state of 3.

Usage:

    python bench/serve_load.py --model lenet --clients 1,32 --duration 20
    python bench/serve_load.py --model mobilenet_v2 --clients 1,32 --grpc
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
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from serve_models import MODELS, BenchModel, prepare_model  # noqa: E402

HOST = "127.0.0.1"  # loopback only
MAX_CLIENTS = 256
MAX_DURATION_S = 120.0
SERVERS = ("http_floor", "http_floor_json", "naive", "direct", "vispipe")
REQUIRED = ("http_floor", "naive", "direct", "vispipe")  # http_floor_json is optional


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
    return _summary(latencies, errors, time.perf_counter() - started)


async def _grpc_client(stub, requests: list, stop_at: float, latencies: list, errors: list) -> None:
    """One caller of TF Serving's gRPC Predict until `stop_at` (binary tensor_content bodies)."""
    import grpc

    i = random.randrange(len(requests))
    while time.perf_counter() < stop_at:
        request = requests[i % len(requests)]
        i += 1
        started = time.perf_counter()
        try:
            await stub.Predict(request, timeout=60)
        except grpc.aio.AioRpcError as error:
            errors.append(error.code().name)
        latencies.append(time.perf_counter() - started)


async def _grpc_load(port: int, requests: list, clients: int, duration: float) -> dict:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    latencies: list[float] = []
    errors: list = []
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stop_at = time.perf_counter() + duration
        started = time.perf_counter()
        await asyncio.gather(*(_grpc_client(stub, requests, stop_at, latencies, errors) for _ in range(clients)))
    return _summary(latencies, errors, time.perf_counter() - started)


def grpc_requests(model: BenchModel) -> list:
    """PredictRequests of the same images as the REST bodies."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    requests = []
    for body in model.bodies:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model.name
        request.model_spec.signature_name = "serving_default"
        images = np.asarray(json.loads(body)["instances"], dtype=np.uint8)
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        requests.append(request)
    return requests


def _summary(latencies: list[float], errors: list, elapsed: float) -> dict:
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


def _model_status(port: int, name: str) -> list:
    import http.client

    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    connection.request("GET", f"/v1/models/{name}")
    return json.loads(connection.getresponse().read())["model_version_status"]


async def _hot_swap(port: int, model: BenchModel, duration: float) -> dict:
    """Drops version 2 in at 1/3 of the run, a broken version 3 at 2/3; watches the status."""
    report: dict = {}
    await asyncio.sleep(duration / 3)
    base = model.base
    copy = os.path.join(base, ".incoming-2")
    shutil.copytree(model.staged_v2, copy)
    os.rename(copy, os.path.join(base, "2"))  # appears complete, as an export would
    dropped = time.perf_counter()
    while time.perf_counter() - dropped < duration / 3:
        states = {s["version"]: s["state"] for s in await asyncio.to_thread(_model_status, port, model.name)}
        if states.get("2") == "AVAILABLE" and states.get("1") == "END":
            report["version_2_serving_after_s"] = round(time.perf_counter() - dropped, 2)
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(max(0.0, dropped + duration / 3 - time.perf_counter()))
    os.makedirs(os.path.join(base, "3"))
    with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    await asyncio.sleep(min(3.0, duration / 4))
    report["status_after_broken_version_3"] = await asyncio.to_thread(_model_status, port, model.name)
    return report

# -- ceilings -----------------------------------------------------------------------------------


def offline_rates(model: BenchModel, seconds: float = 3.0) -> dict[int, float]:
    """Images/s of the SavedModel's serving_default alone, at batch 1, 8 and 32."""
    import numpy as np
    import tensorflow as tf

    function = tf.saved_model.load(os.path.join(model.base, "1")).signatures["serving_default"]
    image = np.asarray(json.loads(model.bodies[0])["instances"], dtype=np.uint8)
    rates = {}
    for batch in (1, 8, 32):
        images = tf.constant(np.repeat(image, batch, axis=0))
        function(images=images)  # traces
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            function(images=images)["probabilities"].numpy()
            calls += 1
        rates[batch] = round(calls * batch / (time.perf_counter() - start), 1)
    return rates


def stored_response(model: BenchModel, path: str) -> str:
    """Writes a predict response of one image (as TF Serving's row format gives it) to `path`."""
    import numpy as np
    import tensorflow as tf

    function = tf.saved_model.load(os.path.join(model.base, "1")).signatures["serving_default"]
    image = np.asarray(json.loads(model.bodies[0])["instances"], dtype=np.uint8)
    outputs = function(images=tf.constant(image))
    row = {"probabilities": outputs["probabilities"].numpy()[0].tolist(), "label": outputs["label"].numpy()[0].decode()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"predictions": [row]}, f)
    return path


# -- servers ------------------------------------------------------------------------------------


def _command(server: str, model: BenchModel, response: str, port: int, grpc_port: int = 0) -> list[str]:
    if server == "vispipe":
        return [sys.executable, "-m", "vispipe.serving", "--model_base_path", model.base,
                "--model_name", model.name, "--port", str(grpc_port), "--file_system_poll_wait_seconds", "0.5",
                "--rest_api_port", str(port)]
    kind, path = {"naive": ("naive", model.keras_path), "direct": ("direct", os.path.join(model.base, "1")),
                  "http_floor": ("floor", response), "http_floor_json": ("floor_json", response)}[server]
    return [sys.executable, os.path.join(BENCH, "serve_apps.py"), kind, path, str(port)]


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of the process and of its main thread (the event loop, which holds the GIL to serve)."""
    import psutil

    process = psutil.Process(pid)
    times = process.cpu_times()
    main = next((t.user_time + t.system_time for t in process.threads() if t.id == pid), 0.0)
    return times.user + times.system, main


def _cpu_per_request(pid: int, before: tuple[float, float], requests: int) -> dict[str, float]:
    after = _cpu_seconds(pid)
    requests = max(requests, 1)
    return {"cpu_s_per_request": round((after[0] - before[0]) / requests, 5),
            "main_thread_cpu_s_per_request": round((after[1] - before[1]) / requests, 5)}


def _serve(server: str, model: BenchModel, response: str, args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """Starts one server, loads it at each client count; returns {server: {count: result}}.

    vispipe's is also loaded over gRPC (as `vispipe_grpc`) with `--grpc`.
    """
    port = _free_port()
    grpc_port = _free_port() if server == "vispipe" and args.grpc else 0
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(_command(server, model, response, port, grpc_port), env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = f"/v1/models/{model.name}:predict"
    results: dict[int, dict] = {}
    grpc_results: dict[int, dict] = {}
    try:
        _wait_ready(port, process)
        for clients in args.clients:
            asyncio.run(_load(port, path, model.bodies, clients, args.warmup))
            cpu_before = _cpu_seconds(process.pid)

            async def timed() -> dict:
                load = asyncio.create_task(_load(port, path, model.bodies, clients, args.duration))
                swap = None
                if server == "vispipe" and args.hot_swap:
                    swap = asyncio.create_task(_hot_swap(port, model, args.duration))
                result = await load
                if swap is not None:
                    result["hot_swap"] = await swap
                return result

            result = asyncio.run(timed())
            result.update(_cpu_per_request(process.pid, cpu_before, result["requests"]))
            results[clients] = result
            print(f"{model.name} {server} x{clients}: {result}", file=sys.stderr)
        if grpc_port:
            requests = grpc_requests(model)
            for clients in args.clients:
                asyncio.run(_grpc_load(grpc_port, requests, clients, args.warmup))
                cpu_before = _cpu_seconds(process.pid)
                result = asyncio.run(_grpc_load(grpc_port, requests, clients, args.duration))
                result["cpu_s_per_request"] = _cpu_per_request(process.pid, cpu_before, result["requests"])["cpu_s_per_request"]
                grpc_results[clients] = result
                print(f"{model.name} {server} gRPC x{clients}: {result}", file=sys.stderr)
    finally:
        _stop(process)
    return {server: results, **({"vispipe_grpc": grpc_results} if grpc_results else {})}


def _report(results: dict[str, dict], offline: dict[int, float], clients: int) -> dict:
    served = {name: results[name][clients] for name in SERVERS if name in results}
    ceiling_model = max(offline.values())
    ceiling_http = served["http_floor"]["throughput_rps"]
    vispipe = served["vispipe"]["throughput_rps"]
    grpc = {}
    if "vispipe_grpc" in results:
        rps = results["vispipe_grpc"][clients]["throughput_rps"]
        grpc = {"vispipe_grpc": results["vispipe_grpc"][clients],
                "grpc_efficiency": round(rps / ceiling_model, 3),
                "grpc_ratio_vs_direct": round(rps / max(served["direct"]["throughput_rps"], 1e-9), 3)}
    return {
        **{name: served[name] for name in ("vispipe", "direct", "naive")},
        **grpc,
        "ratio_vs_direct": round(vispipe / max(served["direct"]["throughput_rps"], 1e-9), 3),
        "ratio_vs_naive": round(vispipe / max(served["naive"]["throughput_rps"], 1e-9), 3),
        "offline_images_per_s": ceiling_model,
        "http_floor_rps": ceiling_http,
        "http_floor": served["http_floor"],
        "efficiency": round(vispipe / min(ceiling_model, ceiling_http), 3),
        "limit": "model" if ceiling_model < ceiling_http else "http",
        **({"http_floor_json_rps": served["http_floor_json"]["throughput_rps"],
            "efficiency_vs_json_floor": round(
                vispipe / min(ceiling_model, served["http_floor_json"]["throughput_rps"]), 3)}
           if "http_floor_json" in served else {}),
        "p99_over_p50": round(served["vispipe"]["p99_ms"] / max(served["vispipe"]["p50_ms"], 1e-9), 2),
        "clients": clients,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="lenet")
    parser.add_argument("--clients", default="32", help=f"concurrent clients, comma-separated counts (each at most {MAX_CLIENTS})")
    parser.add_argument("--duration", type=float, default=20.0, help=f"seconds per server and count (at most {MAX_DURATION_S})")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before timing")
    parser.add_argument("--servers", default=",".join(SERVERS), help="servers to run (http_floor, naive, direct and vispipe give the report)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "vispipe-serve-bench"),
                        help="where the models and data subsets are cached")
    parser.add_argument("--grpc", action="store_true", help="also load vispipe over gRPC (binary tensor bodies)")
    parser.add_argument("--hot-swap", action="store_true", help="drop in version 2, then a broken 3, during the vispipe run")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    if not all(1 <= c <= MAX_CLIENTS for c in args.clients) or not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --duration 0..{MAX_DURATION_S}s")

    model = prepare_model(args.model, args.work_dir)
    for extra in ("2", "3"):
        shutil.rmtree(os.path.join(model.base, extra), ignore_errors=True)
    load_before = os.getloadavg()
    offline = offline_rates(model)
    response = stored_response(model, os.path.join(args.work_dir, f"{model.name}-response.json"))
    results: dict[str, dict[int, dict]] = {}
    for name in args.servers.split(","):
        results.update(_serve(name, model, response, args))
    hot_swap = results.get("vispipe", {}).get(args.clients[0], {}).pop("hot_swap", None)
    common = {
        "model": model.name,
        "offline_images_per_s_by_batch": offline,
        "request_bytes_mean": round(sum(map(len, model.bodies)) / len(model.bodies)),
        "duration_s": args.duration,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    if not set(REQUIRED) <= set(results):
        report = {"results": results, **common}
    elif len(args.clients) == 1:
        report = {**_report(results, offline, args.clients[0]), **common}
    else:
        report = {"by_clients": {str(c): _report(results, offline, c) for c in args.clients}, **common}
    if hot_swap is not None:
        report["hot_swap"] = hot_swap
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
