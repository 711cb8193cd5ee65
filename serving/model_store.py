"""Model versions on disk -> loaded servables: policies, labels, polling, hot swap, config reload.

A model's base path holds numeric version folders; `123/` and `00000123/` are
both version 123 (as in TF Serving) and the folder keeps its own name. Each poll
loads the versions the policy selects and unloads the others; a version that
fails to load is recorded and left out, so the one already serving stays.
Unloading only drops the store's reference: requests already holding a
servable finish on it.

```python
store = ModelStore(read_model_config_file("models.config"), BatchingConfig())
store.poll()
servable = store.get("lenet", label="stable")
store.reload(parse_model_config(new_text))   # HandleReloadConfigRequest
```
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from typing import Callable

from vispipe.serving.config import BatchingConfig
from vispipe.serving.errors import ServingError
from vispipe.serving.models_config import ModelSpec
from vispipe.serving.servable import Servable

__all__ = ["VersionStatus", "ModelStore"]

log = logging.getLogger("serving")


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


def _freeze_long_lived() -> None:
    """Takes the objects alive now out of the cyclic garbage collector's walks.

    TensorFlow, Keras and a loaded model are millions of long-lived Python
    objects; every full collection walked them all with the GIL held, hundreds
    of milliseconds that were the server's p99 under load (bench/README.md).
    Unfrozen and collected first, so that an unloaded version's cycles are
    still freed and no garbage is frozen.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _fingerprint(version_path: str) -> tuple | None:
    """(folder, mtime, size) of the files that make a SavedModel; None while saved_model.pb is missing."""
    pb = os.path.join(version_path, "saved_model.pb")
    if not os.path.isfile(pb):
        return None
    parts: list = [os.path.basename(version_path)]
    for path in (pb, os.path.join(version_path, "variables", "variables.index")):
        if os.path.exists(path):
            stat = os.stat(path)
            parts.append((stat.st_mtime_ns, stat.st_size))
    return tuple(parts)


class _Model:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.configured = True  # False once a reloaded config drops it: its versions unload
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
        allow_unavailable_labels: a reloaded config may point a new label at a version
            that is not loaded (TF Serving's --allow_version_labels_for_unavailable_models).
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        batching: BatchingConfig = BatchingConfig(),
        warmup: bool = True,
        on_batch: Callable[[str, int, str, int], None] | None = None,
        on_change: Callable[[], None] | None = None,
        allow_unavailable_labels: bool = False,
    ):
        self._models = {spec.name: _Model(spec) for spec in specs}
        self._batching = batching
        self._warmup = warmup
        self._on_batch = on_batch
        self._on_change = on_change
        self._allow_unavailable_labels = allow_unavailable_labels
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled = threading.Event()

    @property
    def model_names(self) -> list[str]:
        """The configured models."""
        with self._lock:
            return [name for name, model in self._models.items() if model.configured]

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

    def wait_polled(self, timeout: float | None = None) -> bool:
        """Waits for the first poll (the initial load) to finish; returns whether it did."""
        return self._polled.wait(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Waits for the first poll to finish; returns whether every model has a version available."""
        self._polled.wait(timeout)
        return self.ready()

    def ready(self) -> bool:
        """True when every configured model has at least one loaded, warmed version."""
        with self._lock:
            return all(model.versions for model in self._models.values() if model.configured)

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
        model = self._models.get(name)
        if model is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return model

    def resolve_label(self, name: str, label: str) -> int:
        """The version a label points to (TF Serving: INVALID_ARGUMENT for an unknown label)."""
        model = self._model(name)
        if label not in model.spec.version_labels or not model.configured:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        return model.spec.version_labels[label]

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request: a specific version, a labelled one, or the latest loaded.

        Raises:
            ServingError: NOT_FOUND for an unknown model or a version not loaded,
                INVALID_ARGUMENT for an unknown label.
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
        """Version states of a model (or one version), newest first, as GetModelStatus reports them."""
        model = self._models.get(name)
        with self._lock:
            states = dict(model.status) if model is not None else {}
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [dataclasses.replace(states[version])]
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return [dataclasses.replace(s) for _, s in sorted(states.items(), reverse=True)]

    def loaded(self) -> dict[str, list[int]]:
        """Configured model name -> loaded versions."""
        with self._lock:
            return {name: sorted(m.versions) for name, m in self._models.items() if m.configured}

    def queue_depths(self) -> dict[tuple[str, int], int]:
        """(model, version) -> rows waiting in batchers."""
        with self._lock:
            servables = [s for model in self._models.values() for s in model.versions.values()]
        return {(s.name, s.version): s.queue_depth() for s in servables}

    # -- config reload ---------------------------------------------------------------------

    def _check_labels(self, specs: list[ModelSpec]) -> None:
        # server_core.cc UpdateModelVersionLabelMap: a label may only point at an available
        # version; with the flag, a new (or unchanged) label may point at any version.
        for spec in specs:
            model = self._models.get(spec.name)
            for label, version in spec.version_labels.items():
                current = model.spec.version_labels.get(label) if model is not None and model.configured else None
                if self._allow_unavailable_labels and current in (None, version):
                    continue
                if model is None or version not in model.versions:
                    raise ServingError(
                        "FAILED_PRECONDITION",
                        f"Request to assign label to version {version} of model {spec.name}, "
                        "which is not currently available for inference",
                    )

    def reload(self, specs: list[ModelSpec]) -> None:
        """Serves `specs` instead of the current models (HandleReloadConfigRequest, config file poll).

        Models not in `specs` are unloaded; new ones are loaded before this returns.

        Raises:
            ServingError: FAILED_PRECONDITION for a label on a version that is not
                available (the old config stays), UNKNOWN when a new model loads no version.
        """
        with self._lock:
            self._check_labels(specs)
            new = [spec.name for spec in specs if spec.name not in self._models or not self._models[spec.name].configured]
            wanted = {spec.name: spec for spec in specs}
            for name, model in self._models.items():
                model.configured = name in wanted
            for spec in specs:
                if spec.name in self._models:
                    self._models[spec.name].spec = spec
                    self._models[spec.name].configured = True
                else:
                    self._models[spec.name] = _Model(spec)
        self.poll()
        with self._lock:
            missing = [name for name in new if not self._models[name].versions]
        if missing:
            raise ServingError(
                "UNKNOWN", f"{len(missing)} model(s) did not become available: {{{', '.join(missing)}}}"
            )

    # -- polling ---------------------------------------------------------------------------

    def poll(self) -> None:
        """Scans every base path once: loads newly selected versions, unloads deselected ones."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                try:
                    self._poll_model(model)
                except OSError as error:
                    log.error("model %r: cannot scan base path %s: %s", model.spec.name, model.spec.base_path, error)
            if self._on_change is not None:
                self._on_change()

    def _candidates(self, model: _Model) -> dict[int, tuple]:
        """Version -> fingerprint of the loadable version folders (the folder name is its first part)."""
        found: dict[int, tuple] = {}
        base = model.spec.base_path
        if not model.configured:
            return found
        if not os.path.isdir(base):
            log.warning("model %r: base path %s does not exist (yet)", model.spec.name, base)
            return found
        for entry in sorted(os.listdir(base), key=lambda e: (len(e), e)):
            if not (entry.isascii() and entry.isdigit()):
                continue
            version = int(entry)
            if version in found:
                log.warning("model %r: folders %s and %s are both version %d; serving %s",
                            model.spec.name, found[version][0], entry, version, found[version][0])
                continue
            fingerprint = _fingerprint(os.path.join(base, entry))
            if fingerprint is not None and model.failed.get(version) != fingerprint:
                found[version] = fingerprint
        return found

    def _poll_model(self, model: _Model) -> None:
        candidates = self._candidates(model)
        # Loading can fail; reselect until the policy's choice loaded, so a broken
        # new version leaves the previous one selected (and serving).
        while True:
            wanted = model.spec.version_policy.select(list(candidates)) if model.configured else []
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
        if dropped:
            _freeze_long_lived()

    def _load(self, model: _Model, version: int, fingerprint: tuple) -> bool:
        name = model.spec.name
        path = os.path.join(model.spec.base_path, fingerprint[0])
        with self._lock:
            model.status[version] = VersionStatus(version, "LOADING")
        started = time.monotonic()
        on_batch = None
        if self._on_batch is not None:
            on_batch = lambda signature, size: self._on_batch(name, version, signature, size)  # noqa: E731
        try:
            servable = Servable.load(name, version, path, self._batching, on_batch)
            if self._warmup:
                servable.warm_up()
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
        _freeze_long_lived()
        log.info("model %r: version %d available from %s (%.1fs)", name, version, path, time.monotonic() - started)
        return True
