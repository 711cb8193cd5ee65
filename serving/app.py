"""The server process: REST app + gRPC server + model polling, with graceful shutdown.

```
vispipe serve --model-base-path models/lenet --port 8501 --grpc-port 8500
VISPIPE_SERVE_MODEL_BASE_PATH=models/lenet uvicorn --factory vispipe.serving.app:create_app --port 8501
```
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import AsyncIterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import uvicorn
from fastapi import FastAPI

from vispipe.serving.config import ServerConfig
from vispipe.serving.metrics import ServingMetrics
from vispipe.serving.model_store import ModelStore
from vispipe.serving.rest import build_rest_app

__all__ = ["create_app", "serve"]

log = logging.getLogger("serving")


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """Builds the app; its lifespan loads models, polls for versions and runs gRPC.

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
    holder: dict[str, ServingMetrics] = {}
    store = ModelStore(
        config.models,
        batching=config.batching,
        warmup=config.warmup,
        on_batch=lambda model, version, signature, size: holder["metrics"].observe_batch(model, version, signature, size),
    )
    metrics = holder["metrics"] = ServingMetrics(store.queue_depths, store.loaded)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        store.start(config.poll_interval_s)
        if config.grpc_port is not None:
            from vispipe.serving.grpc_server import start_grpc_server

            grpc_server, app.state.grpc_port = start_grpc_server(store, config, metrics)
        try:
            yield
        finally:
            # uvicorn has stopped accepting and drained HTTP requests by now.
            if grpc_server is not None:
                grpc_server.stop(grace=config.drain_timeout_s).wait(config.drain_timeout_s)
            store.close(timeout=config.drain_timeout_s)
            log.info("model server stopped")

    return build_rest_app(config, store, metrics, lifespan)


def serve(config: ServerConfig) -> int:
    """Runs the server until SIGINT/SIGTERM: then stops accepting, drains in-flight requests, exits.

    Returns:
        The exit status (0).

    Example:
    >>> serve(ServerConfig(models=[ModelSpec("lenet", "models/lenet")]))  # doctest: +SKIP
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=config.drain_timeout_s,
            lifespan="on",
        )
    )
    server.run()
    return 0
