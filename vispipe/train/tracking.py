"""Experiment tracking: a run's parameters, per-epoch metrics and files in MLflow.

MLflow is an optional extra (`pip install vispipe[track]`, which installs
`mlflow-skinny`: the tracking client without MLflow's server). Without a
tracking URI, runs go to a local store under `$VISPIPE_HOME/mlflow`: an
SQLite database (`mlflow.db`) beside an `artifacts/` folder, which needs no
server. MLflow 3 refuses its old plain-folder store unless
`MLFLOW_ALLOW_FILE_STORE=true`; a `file:` URI given explicitly is accepted and
sets it. A tracking URI (`http://host:5000`, `sqlite:///path`,
`databricks`) sends runs there instead.

The tracker talks to MLflow through `MlflowClient` only, never the fluent
`mlflow.start_run` state, so it cannot end or log into a run the user has
open in the same process. The MLflow run id is kept in the run folder
(`mlflow.json`), so `vispipe train --resume` keeps logging into the same
MLflow run.

Example:

```python
tracker = MlflowTracker.open("runs/mnist", params=config_dict, run_name="mnist")
model.fit(ds, callbacks=[tracker.callback()])
tracker.finish("completed", artifacts=["runs/mnist/curves.png"])
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Iterable, Iterator, Mapping

import keras

__all__ = [
    "TRACKING_FILE",
    "FINAL_ARTIFACTS",
    "default_tracking_uri",
    "flatten_params",
    "MlflowTracker",
    "require_tracker",
    "tracked_run",
]

_log = logging.getLogger(__name__)

TRACKING_FILE = "mlflow.json"
# Uploaded when the run ends: what a reader of the MLflow run wants to open.
FINAL_ARTIFACTS = ("run.json", "metrics.jsonl", "curves.png")
_STATUSES = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on one parameter value.


def _vispipe_home() -> str:
    return os.environ.get("VISPIPE_HOME") or os.path.join(os.path.expanduser("~"), ".vispipe")


def default_tracking_uri() -> str:
    """`sqlite:///$VISPIPE_HOME/mlflow/mlflow.db` (the folder is created)."""
    folder = os.path.join(_vispipe_home(), "mlflow")
    os.makedirs(folder, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(folder, "mlflow.db"))


def _artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its files: beside an SQLite store's database
    (MLflow's own default is `./mlruns` in whatever folder the run started);
    a tracking server decides for itself (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = tracking_uri[len("sqlite:///"):]
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(database)), "artifacts")


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow parameters: `{"train.lr.base_lr": "0.01", ...}`.

    Example:

    ```python
    flatten_params({"train": {"epochs": 3, "lr": {"policy": "step"}}})
    # {"train.epochs": "3", "train.lr.policy": "step"}
    ```
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:_MAX_PARAM_LENGTH]
    return flat


def _import_mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ImportError(
            "train.tracking needs MLflow: install vispipe's 'track' extra "
            "(pip install 'vispipe[track]', which brings mlflow-skinny)."
        ) from error
    return MlflowClient


class MlflowTracker:
    """Logs one vispipe run to one MLflow run.

    Use `MlflowTracker.open` (it resumes the MLflow run recorded in the run
    folder), `callback()` for the per-epoch metrics, and `finish` at the end.

    Attributes:
        client: The `MlflowClient`.
        run_id: The MLflow run id.
        tracking_uri: Where the run is logged.
    """

    def __init__(self, client, run_id: str, tracking_uri: str, run_dir: str):
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.run_dir = run_dir

    @classmethod
    def open(cls, run_dir: str, *, params: Mapping[str, Any], run_name: str,
             tracking_uri: str = "", experiment: str = "vispipe",
             tags: Mapping[str, str] | None = None) -> "MlflowTracker":
        """Starts an MLflow run for `run_dir`, or reopens the one it recorded.

        Args:
            run_dir: The vispipe run folder (`mlflow.json` is written there).
            params: Nested settings, logged flattened (`train.epochs`...).
            run_name: The MLflow run name.
            tracking_uri: Where to log; "" for the local default store.
            experiment: MLflow experiment name (created if missing).
            tags: Extra MLflow tags.

        Returns:
            The tracker.

        Raises:
            ImportError: MLflow is not installed (names the extra).
        """
        client_class = _import_mlflow()
        uri = tracking_uri or default_tracking_uri()
        if uri.startswith("file:") or "://" not in uri and uri not in ("databricks",):
            # An explicit plain-folder store: MLflow 3 wants an opt-in for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = client_class(tracking_uri=uri)
        recorded = cls._recorded(run_dir)
        if recorded and recorded.get("tracking_uri") == uri:
            run_id = recorded["run_id"]
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id, uri, run_dir)
        experiment_id = cls._experiment_id(client, experiment, _artifact_root(uri))
        all_tags = {"vispipe.run_dir": os.path.abspath(run_dir), **(tags or {})}
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        tracker = cls(client, run.info.run_id, uri, run_dir)
        tracker.log_params(params)
        tracker._record()
        return tracker

    @staticmethod
    def _recorded(run_dir: str) -> dict[str, Any] | None:
        path = os.path.join(run_dir, TRACKING_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _record(self) -> None:
        path = os.path.join(self.run_dir, TRACKING_FILE)
        tmp = f"{path}.partial"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"run_id": self.run_id, "tracking_uri": self.tracking_uri}, f, indent=2)
        os.replace(tmp, path)

    @staticmethod
    def _experiment_id(client, name: str, artifact_root: str | None) -> str:
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=artifact_root)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs nested settings as flattened parameters."""
        from mlflow.entities import Param

        flat = [Param(k, v) for k, v in flatten_params(params).items()]
        for start in range(0, len(flat), 100):  # MLflow takes 100 params per batch.
            self.client.log_batch(self.run_id, params=flat[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Logs the finite numeric values of `metrics` at `step`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, paths: Iterable[str]) -> list[str]:
        """Uploads the files that exist; returns those logged."""
        logged = []
        for path in paths:
            if os.path.isfile(path):
                self.client.log_artifact(self.run_id, path)
                logged.append(path)
        return logged

    def finish(self, status: str, artifacts: Iterable[str] = ()) -> None:
        """Logs the final files and closes the MLflow run.

        Args:
            status: The vispipe status: "completed", "failed" or "interrupted".
            artifacts: Files to upload (missing ones are skipped).
        """
        self.log_artifacts(artifacts)
        self.client.set_terminated(self.run_id, status=_STATUSES.get(status, "FAILED"))

    def callback(self):
        """A Keras callback that logs every epoch's logs and learning rate."""
        return _EpochLogger(self)


def _current_lr(model) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


class _EpochLogger(keras.callbacks.Callback):
    """Logs `on_epoch_end`'s logs (loss, accuracy, val_*) and the LR, step = epoch + 1."""

    def __init__(self, tracker: MlflowTracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        metrics = dict(logs or {})
        lr = _current_lr(self.model)
        if lr is not None:
            metrics["lr"] = lr
        self.tracker.log_metrics(metrics, step=epoch + 1)


def require_tracker(train_cfg) -> None:
    """Checks up front that `train.tracking`'s library is installed.

    Raises:
        ImportError: "mlflow" without MLflow (names the extra).
    """
    if train_cfg.tracking == "mlflow":
        _import_mlflow()


@contextlib.contextmanager
def tracked_run(run_dir: str, name: str, model_cfg, train_cfg, *, dataset_dir: str,
                enabled: bool = True) -> Iterator[list[keras.callbacks.Callback]]:
    """Logs a training call to MLflow when `train.tracking` is "mlflow".

    Yields the Keras callbacks to train with (none when tracking is off or
    `enabled` is False, e.g. on a rank that does not write the run). On
    exit the MLflow run gets the final files (`FINAL_ARTIFACTS`) and the
    run's status: "completed", "interrupted" (Ctrl-C, SIGTERM) or "failed".

    Args:
        run_dir: The run folder.
        name: The run name (the MLflow run name).
        model_cfg, train_cfg: The settings, logged as parameters.
        dataset_dir: The dataset, logged as `dataset_dir`.
        enabled: Whether this process tracks.

    Example:

    ```python
    with tracked_run(run_dir, "mnist", model_cfg, train_cfg, dataset_dir=ds) as callbacks:
        model.fit(data, callbacks=callbacks)
    ```
    """
    if not enabled or train_cfg.tracking == "none":
        yield []
        return
    params = {"dataset_dir": os.path.abspath(dataset_dir),
              "model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)}
    tracker = MlflowTracker.open(run_dir, params=params, run_name=name,
                                 tracking_uri=train_cfg.tracking_uri)
    _log.info("Tracking run %s in MLflow (%s, run %s)", run_dir, tracker.tracking_uri,
              tracker.run_id)
    status = "failed"
    try:
        yield [tracker.callback()]
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        try:
            tracker.finish(status, [os.path.join(run_dir, f) for f in FINAL_ARTIFACTS])
        except Exception as error:  # noqa: BLE001 - a tracking server's fault never fails a run.
            _log.warning("MLflow run %s not closed: %s", tracker.run_id, error)
