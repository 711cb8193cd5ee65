"""Typed settings of the model server, loadable from YAML with vispipe's strict checker.

```python
config = ServerConfig(models=[ModelSpec(name="lenet", base_path="/models/lenet")])
config = load_server_config("serve.yaml", overrides=["batching.max_batch_size=32"])
```

A YAML file has the same keys as the dataclasses (`models: [{name, base_path, ...}]`,
`rest_port`, `batching: {max_batch_size: 32}`, `limits: {max_image_pixels: ...}`, ...);
unknown keys and wrong types are refused, naming the key.
"""

from __future__ import annotations

import dataclasses
import os

import yaml

from vispipe.config_io import ConfigError, apply_overrides, expand_env, from_dict
from vispipe.serving.models_config import ModelSpec, read_model_config_file

__all__ = ["BatchingConfig", "LimitsConfig", "ServerConfig", "load_server_config", "config_from_mapping"]


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Server-side dynamic batching of concurrent requests.

    Args:
        enabled: whether requests are queued and run as batches.
        max_batch_size: most instances run in one signature call.
        batch_timeout_ms: how long the first queued request waits for others. The
            default 0 runs a request at once when the model is idle, and batches
            the requests that queued while the previous batch ran: on a CPU a
            wait taxed every request at low load (bench/README.md).
        max_queued: most instances waiting per model version; more are refused (503).
        num_batch_threads: batches of one signature that may run at once.
    """

    enabled: bool = True
    max_batch_size: int = 64
    batch_timeout_ms: float = 0.0
    max_queued: int = 2048
    num_batch_threads: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queued < 1 or self.batch_timeout_ms < 0 or self.num_batch_threads < 1:
            raise ValueError(
                "batching: expected max_batch_size >= 1, max_queued >= 1, batch_timeout_ms >= 0, "
                f"num_batch_threads >= 1, got {self.max_batch_size}, {self.max_queued}, "
                f"{self.batch_timeout_ms}, {self.num_batch_threads}"
            )


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """Hard edges on what one request may ask for, checked before anything is allocated.

    Args:
        max_body_bytes: largest request body (REST) or message (gRPC) accepted.
        max_instances: most instances (rows, examples) in one request.
        request_timeout_s: time a request may wait for its result (504 after).
        max_image_pixels: most pixels the encoded images of one request may decode to
            (width x height x frames, summed), read from their headers before decoding.
        max_tensor_elements: most elements the input tensors of one request may declare.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_instances: int = 1024
    request_timeout_s: float = 30.0
    max_image_pixels: int = 50_000_000
    max_tensor_elements: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_instances", "max_image_pixels", "max_tensor_elements"):
            if getattr(self, name) < 1:
                raise ValueError(f"limits.{name}: expected a positive number, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"limits.request_timeout_s: expected > 0, got {self.request_timeout_s}")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything `vispipe serve` needs.

    Args:
        models: the served models (or empty with `model_config_file`).
        model_config_file: a TF Serving models.config to read the models from.
        model_config_poll_s: re-read `model_config_file` this often (0: read once).
        host: interface to bind (loopback by default).
        rest_port: REST port; None disables REST, 0 picks a free port.
        grpc_port: gRPC port; None disables gRPC, 0 picks a free port.
        poll_interval_s: how often base paths are scanned for new versions (0: once).
        batching: dynamic batching settings.
        limits: request limits.
        auth_token: when set, every endpoint but /healthz needs `Authorization: Bearer <token>`.
        cors_origins: origins allowed by CORS (empty: CORS off).
        warmup: run warm-up requests when a version loads.
        drain_timeout_s: how long shutdown waits for in-flight requests.
        prometheus_path: also serve the metrics at this path (TF Serving's
            `--monitoring_config_file`); `/metrics` is always served.
        allow_version_labels_for_unavailable_models: a reloaded config may point a new
            label at a version that is not loaded yet (TF Serving's flag).
    """

    models: list[ModelSpec] = dataclasses.field(default_factory=list)
    model_config_file: str | None = None
    model_config_poll_s: float = 0.0
    host: str = "127.0.0.1"
    rest_port: int | None = 8501
    grpc_port: int | None = 8500
    poll_interval_s: float = 2.0
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    auth_token: str | None = None
    cors_origins: list[str] = dataclasses.field(default_factory=list)
    warmup: bool = True
    drain_timeout_s: float = 30.0
    prometheus_path: str | None = None
    allow_version_labels_for_unavailable_models: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", list(self.cors_origins))
        if bool(self.models) == bool(self.model_config_file):
            raise ValueError(
                "server config: expected models or a model_config_file (one of them), got "
                f"{len(self.models)} models and model_config_file={self.model_config_file!r}"
            )
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"server config: model names must be unique, got {names}")
        if self.rest_port is None and self.grpc_port is None:
            raise ValueError("server config: REST and gRPC are both disabled; enable at least one port")
        if self.rest_port is not None and self.rest_port == self.grpc_port and self.rest_port != 0:
            raise ValueError(f"server config: rest_port and grpc_port must differ, both are {self.rest_port}")
        if self.prometheus_path is not None and not self.prometheus_path.startswith("/"):
            raise ValueError(f"server config: prometheus_path must start with '/', got {self.prometheus_path!r}")

    def model_specs(self) -> list[ModelSpec]:
        """The models: `models`, or those `model_config_file` lists (read now)."""
        return list(self.models) if self.models else read_model_config_file(self.model_config_file)

    @classmethod
    def from_env(cls) -> "ServerConfig":
        """Builds a config from VISPIPE_SERVE_* variables (for `uvicorn --factory`).

        Reads VISPIPE_SERVE_CONFIG (a YAML file), or VISPIPE_SERVE_MODEL_CONFIG_FILE or
        VISPIPE_SERVE_MODEL_BASE_PATH (+ _MODEL_NAME); and optionally _GRPC_PORT
        (empty: off), _AUTH_TOKEN, _POLL_INTERVAL_S.

        Example:
        >>> os.environ["VISPIPE_SERVE_MODEL_BASE_PATH"] = "/models/lenet"  # doctest: +SKIP
        >>> ServerConfig.from_env().models[0].name  # doctest: +SKIP
        'lenet'
        """
        env = os.environ
        if env.get("VISPIPE_SERVE_CONFIG"):
            return load_server_config(env["VISPIPE_SERVE_CONFIG"])
        data: dict = {}
        base_path = env.get("VISPIPE_SERVE_MODEL_BASE_PATH")
        if env.get("VISPIPE_SERVE_MODEL_CONFIG_FILE"):
            data["model_config_file"] = env["VISPIPE_SERVE_MODEL_CONFIG_FILE"]
        elif base_path:
            name = env.get("VISPIPE_SERVE_MODEL_NAME") or os.path.basename(os.path.normpath(base_path))
            data["models"] = [{"name": name, "base_path": base_path}]
        else:
            raise ValueError(
                "expected VISPIPE_SERVE_CONFIG, VISPIPE_SERVE_MODEL_BASE_PATH or "
                "VISPIPE_SERVE_MODEL_CONFIG_FILE in the environment"
            )
        grpc_port = env.get("VISPIPE_SERVE_GRPC_PORT", "")
        data["grpc_port"] = int(grpc_port) if grpc_port else None
        data["auth_token"] = env.get("VISPIPE_SERVE_AUTH_TOKEN") or None
        data["poll_interval_s"] = float(env.get("VISPIPE_SERVE_POLL_INTERVAL_S", "2.0"))
        return config_from_mapping(data, "environment")


def config_from_mapping(data: dict, where: str) -> ServerConfig:
    """A ServerConfig from a plain mapping, through vispipe's strict checker.

    Raises:
        ConfigError: an unknown key, a wrong type or a bad value, naming `where` and the key.

    Example:
    >>> config_from_mapping({"models": [{"name": "m", "base_path": "/m"}]}, "example").rest_port
    8501
    """
    try:
        return from_dict(ServerConfig, data, f"{where}: ")
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


# A pipeline file (the tree `vispipe run` reads) keeps the server's settings in this section.
PIPELINE_SECTION = "serve"


def _server_keys(data: dict, path: str) -> dict:
    """The ServerConfig mapping of a file: the file itself, or a pipeline tree's `serve:` section."""
    if PIPELINE_SECTION not in data:
        return data
    section = data[PIPELINE_SECTION] or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {PIPELINE_SECTION}: expected a mapping of server settings, "
                          f"got {type(section).__name__}")
    return section


def _from_server_root(override: str) -> str:
    """`serve.batching.max_batch_size=8` (from the pipeline root) -> `batching.max_batch_size=8`."""
    prefix = PIPELINE_SECTION + "."
    return override[len(prefix):] if override.startswith(prefix) else override


def load_server_config(path: str | None, overrides: list[str] | None = None, base: dict | None = None) -> ServerConfig:
    """Reads a server YAML file (`${VAR:-default}` expanded) and applies `key=value` overrides.

    The file is either a server config (ServerConfig's keys at the top) or a pipeline file,
    whose `serve:` section is read; overrides may start at either root (`serve.` is dropped).

    Args:
        path: the YAML file, or None to start from `base` only.
        overrides: `dotted.key=value` strings (`--set`), applied last.
        base: values applied on top of the file before the overrides (the CLI's flags).

    Returns:
        The validated ServerConfig.

    Example:
    >>> load_server_config("serve.yaml", ["limits.max_instances=64"])  # doctest: +SKIP
    """
    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"server config file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(expand_env(f.read())) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
        data = _server_keys(data, path)
    for key, value in (base or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    apply_overrides(data, [_from_server_root(item) for item in overrides or []])
    return config_from_mapping(data, path or "flags")
