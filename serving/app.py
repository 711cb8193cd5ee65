"""The server process: REST app + gRPC server + model and config polling, with graceful shutdown.

```
vispipe serve --model_base_path=/models/lenet --port=8500 --rest_api_port=8501
VISPIPE_SERVE_MODEL_BASE_PATH=models/lenet uvicorn --factory vispipe.serving.app:create_app --port 8501
```
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import threading
from typing import AsyncIterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import uvicorn
from fastapi import FastAPI

from vispipe.serving.config import ServerConfig
from vispipe.serving.errors import ServingError
from vispipe.serving.grpc_server import start_grpc_server
from vispipe.serving.metrics import ServingMetrics
from vispipe.serving.model_store import ModelStore
from vispipe.serving.models_config import parse_model_config
from vispipe.serving.rest import build_rest_app

__all__ = ["ServerRuntime", "create_app", "serve", "exposure_warning"]

log = logging.getLogger("serving")


def exposure_warning(config: ServerConfig) -> str | None:
    """A warning when the server listens beyond this machine without a token, else None.

    TF Serving has no authentication; vispipe keeps that default on loopback, and says
    what binding elsewhere without `--auth-token` gives away.

    Example:
    >>> exposure_warning(ServerConfig(models=[ModelSpec("m", "/m")], host="0.0.0.0"))  # doctest: +SKIP
    'listening on 0.0.0.0 without --auth-token: ...'
    """
    if config.auth_token:
        return None
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if loopback:
        return None
    return (
        f"listening on {config.host} without --auth-token: anyone who can reach these ports can run and "
        "inspect the models (predict, metadata, config reload). Pass --auth-token (or set "
        "VISPIPE_SERVE_AUTH_TOKEN), or bind --host 127.0.0.1 behind an authenticating proxy."
    )


class ServerRuntime:
    """What outlives requests: the model store (version polling), gRPC, and the models.config poller.

    Args:
        config: the server settings.
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        holder: dict[str, ServingMetrics] = {}
        self.store = ModelStore(
            config.model_specs(),
            batching=config.batching,
            warmup=config.warmup,
            on_batch=lambda model, version, signature, size: holder["metrics"].observe_batch(model, version, signature, size),
            allow_unavailable_labels=config.allow_version_labels_for_unavailable_models,
        )
        self.metrics = holder["metrics"] = ServingMetrics(self.store.queue_depths, self.store.loaded)
        self.grpc_server = None
        self.grpc_port: int | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Loads the models (the first poll), then starts gRPC (if enabled) and the config file poller.

        As in TF Serving, the ports open once the initial load is done, so a client (or a
        Kubernetes probe) that reaches them finds the models loaded.
        """
        self.store.start(self.config.poll_interval_s)
        self.store.wait_polled()
        if self.config.grpc_port is not None:
            self.grpc_server, self.grpc_port = start_grpc_server(self.store, self.config, self.metrics)
        if self.config.model_config_file and self.config.model_config_poll_s > 0:
            self._watcher = threading.Thread(target=self._watch_config_file, name="config-poller", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        """Stops accepting gRPC calls, lets in-flight ones finish, unloads the models."""
        self._stopping.set()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=self.config.drain_timeout_s).wait(self.config.drain_timeout_s)
        self.store.close(timeout=self.config.drain_timeout_s)
        log.info("model server stopped")

    def _watch_config_file(self) -> None:
        path = self.config.model_config_file
        folder = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            applied = f.read()
        while not self._stopping.wait(self.config.model_config_poll_s):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as error:
                log.error("model config %s not readable: %s", path, error)
                continue
            if text == applied:
                continue
            applied = text  # a broken file is reported once, not on every poll
            try:
                self.store.reload(parse_model_config(text, path, relative_to=folder))
                log.info("reloaded %s", path)
            except (ValueError, ServingError) as error:
                log.error("model config %s not reloaded: %s", path, error)


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """Builds the app; its lifespan starts and stops the ServerRuntime.

    Args:
        config: the server settings; None reads them from VISPIPE_SERVE_* variables
            (`uvicorn --factory vispipe.serving.app:create_app`).

    Returns:
        The FastAPI app (`app.state.store`, `app.state.metrics`, and once started
        `app.state.grpc_port`).

    Example:
    >>> app = create_app(ServerConfig(models=[ModelSpec("lenet", "models/lenet")], grpc_port=None))  # doctest: +SKIP
    """
    config = config or ServerConfig.from_env()
    runtime = ServerRuntime(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(runtime.start)
        app.state.grpc_port = runtime.grpc_port
        try:
            yield
        finally:
            runtime.stop()  # uvicorn has stopped accepting and drained HTTP requests by now

    app = build_rest_app(config, runtime.store, runtime.metrics, lifespan)
    app.state.runtime = runtime
    return app


def _serve_grpc_only(config: ServerConfig) -> int:
    runtime = ServerRuntime(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runtime.start()
    log.info("REST API disabled (--rest_api_port=0); serving gRPC on port %s", runtime.grpc_port)
    stop.wait()
    runtime.stop()
    return 0


def serve(config: ServerConfig) -> int:
    """Runs the server until SIGINT/SIGTERM: then stops accepting, drains in-flight requests, exits.

    Returns:
        The exit status (0).

    Example:
    >>> serve(ServerConfig(models=[ModelSpec("lenet", "models/lenet")]))  # doctest: +SKIP
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warning = exposure_warning(config)
    if warning:
        log.warning(warning)
    if config.rest_port is None:
        return _serve_grpc_only(config)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.rest_port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=config.drain_timeout_s,
            lifespan="on",
        )
    )
    server.run()
    return 0
