"""Typed settings of the model server: models, version policy, batching, limits.

```python
config = ServerConfig(models=[ModelSpec(name="lenet", base_path="/models/lenet")])
```
"""

from __future__ import annotations

import dataclasses
import os
import re

__all__ = [
    "VersionPolicy",
    "ModelSpec",
    "BatchingConfig",
    "LimitsConfig",
    "ServerConfig",
    "validate_model_name",
]

# TF Serving names are URL path segments; this also rules out path traversal.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_LABEL_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def validate_model_name(name: str, what: str = "model name") -> str:
    """Returns `name` if it is a safe model (or label) name, else raises ValueError.

    Args:
        name: the name to check.
        what: what the name is, for the error message.

    Returns:
        `name` unchanged.

    Example:
    >>> validate_model_name("lenet")
    'lenet'
    """
    pattern = _LABEL_PATTERN if what == "version label" else _NAME_PATTERN
    if not isinstance(name, str) or not pattern.match(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: expected letters, digits, '_', '-', '.' "
            f"(matching {pattern.pattern}) and no '..'"
        )
    return name


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which numeric version folders of a model are served (TF Serving semantics).

    Args:
        kind: "latest" (the `num_versions` highest), "all", or "specific".
        num_versions: how many of the latest versions to serve with "latest".
        versions: the version numbers to serve with "specific".
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(
                f"version policy kind: expected 'latest', 'all' or 'specific', got {self.kind!r}"
            )
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"version policy latest: num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("version policy specific: expected at least one version, got none")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of the `available` ones, ascending.

        Example:
        >>> VersionPolicy("latest", 2).select([1, 3, 2])
        [2, 3]
        """
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        return [v for v in ordered if v in set(self.versions)]

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """Parses "latest", "latest:2", "all" or "specific:1,3" (the CLI form).

        Example:
        >>> VersionPolicy.parse("specific:1,3").versions
        (1, 3)
        """
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                return cls("latest", int(arg) if arg else 1)
            if kind == "specific":
                return cls("specific", versions=tuple(int(v) for v in arg.split(",") if v))
        except ValueError:
            raise ValueError(
                f"version policy: expected 'latest[:N]', 'all' or 'specific:V1,V2', got {text!r}"
            ) from None
        return cls(kind)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One served model: a base path holding numeric version folders.

    Args:
        name: the model name used in URLs (`/v1/models/{name}`).
        base_path: folder with `<version>/saved_model.pb` sub-folders.
        version_policy: which versions to serve.
        version_labels: label -> version, e.g. {"stable": 1, "canary": 2}.
    """

    name: str
    base_path: str
    version_policy: VersionPolicy = VersionPolicy()
    version_labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        for label, version in self.version_labels.items():
            validate_model_name(label, "version label")
            if not isinstance(version, int) or version < 0:
                raise ValueError(f"model {self.name!r} label {label!r}: expected a version number, got {version!r}")


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Server-side dynamic batching of concurrent requests.

    Args:
        enabled: whether requests are queued and run as batches.
        max_batch_size: most instances run in one signature call.
        batch_timeout_ms: how long the first queued request waits for others.
        max_queued: most instances waiting per model version; more are refused (503).
    """

    enabled: bool = True
    max_batch_size: int = 64
    batch_timeout_ms: float = 2.0
    max_queued: int = 2048

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queued < 1 or self.batch_timeout_ms < 0:
            raise ValueError(
                "batching: expected max_batch_size >= 1, max_queued >= 1, batch_timeout_ms >= 0, got "
                f"{self.max_batch_size}, {self.max_queued}, {self.batch_timeout_ms}"
            )


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """Hard edges on what one request may ask for.

    Args:
        max_body_bytes: largest request body accepted (413 above).
        max_instances: most instances (rows) in one request (400 above).
        request_timeout_s: time a request may wait for its result (504 after).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_instances: int = 1024
    request_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything `vispipe serve` needs.

    Args:
        models: the served models.
        host: interface to bind (loopback by default).
        port: REST port.
        grpc_port: gRPC port; None disables gRPC, 0 picks a free port.
        poll_interval_s: how often base paths are scanned for new versions (0: never).
        batching: dynamic batching settings.
        limits: request limits.
        auth_token: when set, every endpoint but /healthz needs `Authorization: Bearer <token>`.
        cors_origins: origins allowed by CORS (empty: CORS off).
        warmup: run warm-up requests when a version loads.
        drain_timeout_s: how long shutdown waits for in-flight requests.
    """

    models: list[ModelSpec]
    host: str = "127.0.0.1"
    port: int = 8501
    grpc_port: int | None = 8500
    poll_interval_s: float = 2.0
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    auth_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    warmup: bool = True
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("server config: expected at least one model, got none")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"server config: model names must be unique, got {names}")

    @classmethod
    def from_env(cls) -> "ServerConfig":
        """Builds a config from VISPIPE_SERVE_* variables (for `uvicorn --factory`).

        Reads VISPIPE_SERVE_MODEL_CONFIG_FILE or VISPIPE_SERVE_MODEL_BASE_PATH (+ _MODEL_NAME),
        and optionally _GRPC_PORT (empty: off), _AUTH_TOKEN, _POLL_INTERVAL_S.

        Example:
        >>> os.environ["VISPIPE_SERVE_MODEL_BASE_PATH"] = "/models/lenet"  # doctest: +SKIP
        >>> ServerConfig.from_env().models[0].name  # doctest: +SKIP
        'lenet'
        """
        from vispipe.serving.model_store import read_model_config_file

        env = os.environ
        config_file = env.get("VISPIPE_SERVE_MODEL_CONFIG_FILE")
        base_path = env.get("VISPIPE_SERVE_MODEL_BASE_PATH")
        if config_file:
            models = read_model_config_file(config_file)
        elif base_path:
            name = env.get("VISPIPE_SERVE_MODEL_NAME") or os.path.basename(os.path.normpath(base_path))
            models = [ModelSpec(name=name, base_path=base_path)]
        else:
            raise ValueError(
                "expected VISPIPE_SERVE_MODEL_BASE_PATH or VISPIPE_SERVE_MODEL_CONFIG_FILE in the environment"
            )
        grpc_port = env.get("VISPIPE_SERVE_GRPC_PORT", "")
        return cls(
            models=models,
            grpc_port=int(grpc_port) if grpc_port else None,
            auth_token=env.get("VISPIPE_SERVE_AUTH_TOKEN") or None,
            poll_interval_s=float(env.get("VISPIPE_SERVE_POLL_INTERVAL_S", "2.0")),
        )
