"""Model versions on disk -> loaded servables: policies, labels, polling, hot swap.

A model's base path holds numeric version folders (`<base>/<version>/saved_model.pb`).
Each poll loads the versions the policy selects and unloads the others; a version
that fails to load is recorded and left out, so the one already serving stays.
Unloading only drops the store's reference: requests already holding a servable
finish on it.

```python
store = ModelStore(read_model_config_file("models.config"), BatchingConfig())
store.poll()
servable = store.get("lenet", label="stable")
```
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Callable

import numpy as np

from vispipe.serving.config import BatchingConfig, ModelSpec, VersionPolicy
from vispipe.serving.errors import ServingError
from vispipe.serving.servable import DEFAULT_SIGNATURE, WARMUP_FILE, Servable

__all__ = ["VersionStatus", "ModelStore", "parse_model_config", "read_model_config_file"]

log = logging.getLogger("serving")


def parse_model_config(text: str, source: str = "<models.config>") -> list[ModelSpec]:
    """Parses a TF Serving `--model_config_file` (ModelServerConfig text proto, model_config_list).

    Args:
        text: the text proto.
        source: the file name, for error messages.

    Returns:
        One ModelSpec per `config { ... }` entry.

    Example:
    >>> parse_model_config('model_config_list { config { name: "m" base_path: "/models/m" } }')[0].name
    'm'
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: not a ModelServerConfig text proto: {error}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{source}: expected a model_config_list {{ config {{ ... }} }}, got none")
    specs = []
    for entry in proto.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ValueError(f"{source}: each config needs a name and a base_path, got {entry}".strip())
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{source}: model {entry.name!r}: expected model_platform 'tensorflow', got {entry.model_platform!r}")
        policy_proto = entry.model_version_policy
        kind = policy_proto.WhichOneof("policy_choice")
        if kind == "all":
            policy = VersionPolicy("all")
        elif kind == "specific":
            policy = VersionPolicy("specific", versions=tuple(policy_proto.specific.versions))
        else:
            policy = VersionPolicy("latest", policy_proto.latest.num_versions or 1)
        base_path = entry.base_path
        if not os.path.isabs(base_path) and source != "<models.config>":
            base_path = os.path.join(os.path.dirname(os.path.abspath(source)), base_path)
        specs.append(
            ModelSpec(
                name=entry.name,
                base_path=base_path,
                version_policy=policy,
                version_labels=dict(entry.version_labels),
            )
        )
    return specs


def read_model_config_file(path: str) -> list[ModelSpec]:
    """Reads and parses a TF Serving models.config file (relative base paths are taken from its folder)."""
    with open(path, encoding="utf-8") as f:
        return parse_model_config(f.read(), source=path)


@dataclasses.dataclass
class VersionStatus:
    """A version's state as TF Serving reports it (GetModelStatus, GET /v1/models/{name}).

    Args:
        version: the version number.
        state: "START", "LOADING", "AVAILABLE", "UNLOADING" or "END".
        error_code: "OK", or the code of the failed load ("UNKNOWN", "NOT_FOUND", ...).
        error_message: why it failed to load, else "".
    """

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


def _fingerprint(version_path: str) -> tuple | None:
    """(mtime, size) of the files that make a SavedModel; None while saved_model.pb is missing."""
    pb = os.path.join(version_path, "saved_model.pb")
    if not os.path.isfile(pb):
        return None
    parts = []
    for path in (pb, os.path.join(version_path, "variables", "variables.index")):
        if os.path.exists(path):
            stat = os.stat(path)
            parts.append((stat.st_mtime_ns, stat.st_size))
    return tuple(parts)


class _Model:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.versions: dict[int, Servable] = {}
        self.status: dict[int, VersionStatus] = {}
        self.failed: dict[int, tuple] = {}  # version -> fingerprint of the failed files


class ModelStore:
    """Loads the model versions each policy selects and hands out servables.

    Args:
        specs: the served models.
        batching: batching settings of every loaded version.
        warmup: run warm-up requests on load (the export's records, or a synthetic one).
        on_batch: metrics hook, called with (model, version, signature, batch size).
        on_change: metrics hook, called after versions are loaded or unloaded.
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        batching: BatchingConfig = BatchingConfig(),
        warmup: bool = True,
        on_batch: Callable[[str, int, str, int], None] | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self._models = {spec.name: _Model(spec) for spec in specs}
        self._batching = batching
        self._warmup = warmup
        self._on_batch = on_batch
        self._on_change = on_change
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled = threading.Event()

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def start(self, poll_interval_s: float) -> None:
        """Polls in a background thread: at once, then every `poll_interval_s` (0: once)."""

        def loop() -> None:
            while True:
                self.poll()
                self._polled.set()
                if poll_interval_s <= 0 or self._stop.wait(poll_interval_s):
                    return

        self._thread = threading.Thread(target=loop, name="model-poller", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Waits for the first poll to finish; returns whether every model has a version available."""
        self._polled.wait(timeout)
        return self.ready()

    def ready(self) -> bool:
        """True when every model has at least one loaded, warmed version."""
        with self._lock:
            return all(model.versions for model in self._models.values())

    def close(self, timeout: float | None = None) -> None:
        """Stops polling and unloads every version once its queued requests have run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            servables = [s for model in self._models.values() for s in model.versions.values()]
            for model in self._models.values():
                model.versions.clear()
        for servable in servables:
            servable.close(timeout)

    # -- lookups ---------------------------------------------------------------------------

    def _model(self, name: str) -> _Model:
        if name not in self._models:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return self._models[name]

    def resolve_label(self, name: str, label: str) -> int:
        """The version a label points to (404 for an unknown label)."""
        model = self._model(name)
        if label not in model.spec.version_labels:
            raise ServingError(
                "NOT_FOUND",
                f"Unrecognized servable version label: {label} for model {name}; "
                f"labels are {sorted(model.spec.version_labels)}",
            )
        return model.spec.version_labels[label]

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request: a specific version, a labelled one, or the latest loaded.

        Raises:
            ServingError: NOT_FOUND for an unknown model, label or version not loaded.
        """
        model = self._model(name)
        if label is not None:
            version = self.resolve_label(name, label)
        with self._lock:
            if version is None:
                if not model.versions:
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
                return model.versions[max(model.versions)]
            if version not in model.versions:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
            return model.versions[version]

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states of a model (or one version), as GetModelStatus reports them."""
        model = self._model(name)
        with self._lock:
            if version is not None:
                if version not in model.status:
                    raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [dataclasses.replace(model.status[version])]
            if not model.status:
                raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            return [dataclasses.replace(s) for _, s in sorted(model.status.items())]

    def loaded(self) -> dict[str, list[int]]:
        """Model name -> loaded versions."""
        with self._lock:
            return {name: sorted(model.versions) for name, model in self._models.items()}

    def queue_depths(self) -> dict[tuple[str, int], int]:
        """(model, version) -> rows waiting in batchers."""
        with self._lock:
            servables = [s for model in self._models.values() for s in model.versions.values()]
        return {(s.name, s.version): s.queue_depth() for s in servables}

    # -- polling ---------------------------------------------------------------------------

    def poll(self) -> None:
        """Scans every base path once: loads newly selected versions, unloads deselected ones."""
        with self._poll_lock:
            for model in self._models.values():
                try:
                    self._poll_model(model)
                except OSError as error:
                    log.error("model %r: cannot scan base path %s: %s", model.spec.name, model.spec.base_path, error)
            if self._on_change is not None:
                self._on_change()

    def _candidates(self, model: _Model) -> dict[int, tuple]:
        found = {}
        base = model.spec.base_path
        if not os.path.isdir(base):
            log.warning("model %r: base path %s does not exist (yet)", model.spec.name, base)
            return found
        for entry in os.listdir(base):
            if not (entry.isascii() and entry.isdigit()):
                continue
            fingerprint = _fingerprint(os.path.join(base, entry))
            version = int(entry)
            if fingerprint is not None and model.failed.get(version) != fingerprint:
                found[version] = fingerprint
        return found

    def _poll_model(self, model: _Model) -> None:
        candidates = self._candidates(model)
        # Loading can fail; reselect until the policy's choice loaded, so a broken
        # new version leaves the previous one selected (and serving).
        while True:
            wanted = model.spec.version_policy.select(list(candidates))
            pending = [v for v in wanted if v not in model.versions]
            if not pending:
                break
            for version in pending:
                if not self._load(model, version, candidates[version]):
                    del candidates[version]
        with self._lock:
            dropped = [model.versions.pop(v) for v in list(model.versions) if v not in wanted]
            for servable in dropped:
                model.status[servable.version] = VersionStatus(servable.version, "END")
        for servable in dropped:
            log.info("model %r: unloading version %d", model.spec.name, servable.version)
            servable.close()

    def _load(self, model: _Model, version: int, fingerprint: tuple) -> bool:
        name = model.spec.name
        path = os.path.join(model.spec.base_path, str(version))
        with self._lock:
            model.status[version] = VersionStatus(version, "LOADING")
        started = time.monotonic()
        on_batch = None
        if self._on_batch is not None:
            on_batch = lambda signature, size: self._on_batch(name, version, signature, size)  # noqa: E731
        try:
            servable = Servable.load(name, version, path, self._batching, on_batch)
            if self._warmup:
                _warm_up(servable)
        except Exception as error:  # any load failure is reported, never fatal to the server
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log.error("model %r: version %d failed to load from %s: %s", name, version, path, message)
            with self._lock:
                model.failed[version] = fingerprint
                model.status[version] = VersionStatus(version, "END", "UNKNOWN", message)
            return False
        with self._lock:
            model.versions[version] = servable
            model.status[version] = VersionStatus(version, "AVAILABLE")
            model.failed.pop(version, None)
        log.info("model %r: version %d available (%.1fs)", name, version, time.monotonic() - started)
        return True


def _warm_up(servable: Servable) -> None:
    """Replays the export's warm-up records, else one synthetic row through serving_default."""
    from vispipe.serving.codec import check_inputs
    from vispipe.serving.protos import arrays_from_tensor_protos, examples_from_input, warmup_requests

    path = os.path.join(servable.path, WARMUP_FILE)
    if os.path.isfile(path):
        for record in warmup_requests(path):
            kind = record.WhichOneof("log_type")
            if kind == "predict_log":
                request = record.predict_log.request
                sig = servable.signature(request.model_spec.signature_name or None)
                servable.run(sig.name, check_inputs(sig, arrays_from_tensor_protos(request.inputs)))
            elif kind == "classify_log":
                request = record.classify_log.request
                sig = servable.signature(request.model_spec.signature_name or "classify")
                servable.run(sig.name, {next(iter(sig.inputs)): examples_from_input(request.input)})
        return
    sig = servable.signatures.get(DEFAULT_SIGNATURE)
    if sig is None or any(spec.dtype.name == "string" for spec in sig.inputs.values()):
        return  # no synthetic value is a valid encoded image; the first request warms it
    inputs = {}
    for name, spec in sig.inputs.items():
        shape = [1] + [d if d is not None else 32 for d in spec.shape.as_list()[1:]] if spec.shape.rank else []
        inputs[name] = np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)
    servable.run(sig.name, inputs)
