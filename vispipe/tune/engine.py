"""`vispipe tune`: hyper-parameter search with Optuna, every trial a vispipe run.

How a search runs:

- One dataset serves every trial: the pipeline's (created once, under a lock,
  when several processes start together) or an existing one.
- The study lives in Optuna storage (by default `sqlite:///OUT/study.db`):
  a killed search started again with the same command continues it, and
  several processes, on several machines with a shared storage URL (e.g.
  PostgreSQL) and a shared `OUT` folder, work on one study together.
- The pipeline's own settings are the first trial (the baseline, even when
  they lie outside the space), so the table shows what the search gained.
- Each trial is a normal training run in `OUT/trials/trial-NNN` (recorded in
  the registry, with `run.json`, curves, checkpoints), trained in a child
  process of its own by default (`isolation: process`: a crash or
  out-of-memory ends one trial, and TensorFlow's state starts clean) or in
  this process (`inline`, faster for small models).
- After each epoch the validation metric is reported to Optuna; a trial its
  pruner stops (median rule, or Hyperband) is stopped like Ctrl-C: its run is
  "interrupted" and the trial "PRUNED".
- Optuna's heartbeat marks a trial whose process died as failed after
  `heartbeat_s * 2` seconds; it is retried with the same values, and the
  retry resumes the dead trial's run folder from its last checkpoint.
- The search stops when `trials` trials have completed or been pruned (all
  processes together).

Outputs in `OUT`: `tune_results.csv` (one row per trial), `tune.json` (best
trial, baseline, settings), `tune.png` (the search: value per trial with the
best so far, and each parameter against the value), `best.yaml` (the
pipeline with the best values).

Example:

```python
result = tune(load_pipeline("pipelines/mnist-lenet.yaml"), "tune/mnist",
              TuneSettings(trials=20, isolation="inline"))
print(result.summary_table())
```
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import yaml

from vispipe.config_io import to_dict
from vispipe.configs import PipelineConfig, choices
from vispipe.tune.space import SearchParam, apply_values, baseline_values, parse_space, suggest

__all__ = [
    "METRICS",
    "ISOLATIONS",
    "SAMPLERS",
    "PRUNERS",
    "TuneSettings",
    "TrialRecord",
    "TuneResult",
    "tune",
    "trial_value",
]

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
ISOLATIONS = ("process", "inline")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
_TRIALS_DIR = "trials"
_POLL_S = 1.0


@dataclass
class TuneSettings:
    """How `tune` searches.

    Args:
        trials: Trials to complete or prune in total (all processes).
        metric: "val_accuracy" (maximized) or "val_loss" (minimized): the
            best epoch's value is the trial's.
        space: The search space (see `vispipe.tune.space`); empty: the
            default five knobs.
        sampler: "tpe" (Optuna's default) or "random".
        pruner: "median", "hyperband" or "none".
        storage: Optuna storage URL; "" is `sqlite:///OUT/study.db`.
        study: Study name; "" is the pipeline's name.
        isolation: "process" (a child process per trial) or "inline".
        seed: Seed of the sampler.
        heartbeat_s: Seconds between heartbeats; a trial silent for twice
            that is failed and retried.
        baseline: Run the pipeline's own values first.
    """

    trials: int = 20
    metric: str = choices(tuple(METRICS), "val_accuracy")
    space: dict[str, Any] = field(default_factory=dict)
    sampler: str = choices(SAMPLERS, "tpe")
    pruner: str = choices(PRUNERS, "median")
    storage: str = ""
    study: str = ""
    isolation: str = choices(ISOLATIONS, "process")
    seed: int = 42
    heartbeat_s: int = 10
    baseline: bool = True

    def check(self) -> None:
        checks = (
            ("tune.trials", self.trials, self.trials >= 1, "an integer >= 1"),
            ("tune.metric", self.metric, self.metric in METRICS, f"one of {tuple(METRICS)}"),
            ("tune.sampler", self.sampler, self.sampler in SAMPLERS, f"one of {SAMPLERS}"),
            ("tune.pruner", self.pruner, self.pruner in PRUNERS, f"one of {PRUNERS}"),
            ("tune.isolation", self.isolation, self.isolation in ISOLATIONS,
             f"one of {ISOLATIONS}"),
            ("tune.heartbeat_s", self.heartbeat_s, self.heartbeat_s >= 1, "an integer >= 1"),
        )
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {value!r}.")


@dataclass
class TrialRecord:
    """One row of the results table."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_dir: str
    epochs: int
    duration_s: float
    baseline: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TuneResult:
    """What a search found.

    Attributes:
        trials: Every trial of the study, in order.
        best: The best completed trial, or None.
        baseline: The trial of the pipeline's own values, or None.
        metric, direction: What was optimized.
        out_dir: The output folder.
        files: Written files by kind.
    """

    trials: list[TrialRecord]
    best: TrialRecord | None
    baseline: TrialRecord | None
    metric: str
    direction: str
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "direction": self.direction, "out_dir": self.out_dir,
            "best": self.best.to_json() if self.best else None,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "trials": [t.to_json() for t in self.trials], "files": dict(self.files),
        }

    def summary_table(self) -> str:
        from vispipe.tune.report import results_table

        return results_table(self)


def trial_value(records: list[dict[str, Any]], metric: str) -> float | None:
    """The best epoch's `metric` in a run's epoch records (None before any validation)."""
    values = [r[metric] for r in records if r.get(metric) is not None]
    if not values:
        return None
    return max(values) if METRICS[metric] == "maximize" else min(values)


class _Pruned(KeyboardInterrupt):
    """Stops a trial's training the way Ctrl-C does (the run is "interrupted")."""


def _pruning_callback(trial, metric: str):
    import keras

    class PruningCallback(keras.callbacks.Callback):
        """Reports the epoch's metric; stops training when the pruner says so."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(metric)
            if value is None:
                return
            trial.report(float(value), epoch + 1)
            if trial.should_prune():
                raise _Pruned(f"pruned after epoch {epoch + 1} ({metric} {float(value):.4f})")

    return PruningCallback()


def _make_study(settings: TuneSettings, out_dir: str, name: str):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = settings.storage or "sqlite:///" + os.path.join(out_dir, "study.db")
    # A retry copies the dead trial's values and user attributes (its run folder).
    retry = RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True)
    storage = RDBStorage(url, heartbeat_interval=settings.heartbeat_s,
                         grace_period=2 * settings.heartbeat_s,
                         heartbeat_stale_trial_callback=retry)
    sampler = (optuna.samplers.RandomSampler(seed=settings.seed) if settings.sampler == "random"
               else optuna.samplers.TPESampler(seed=settings.seed))
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner,
    }[settings.pruner]()
    return optuna.create_study(storage=storage, study_name=settings.study or name,
                               direction=METRICS[settings.metric], sampler=sampler,
                               pruner=pruner, load_if_exists=True)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock file shared by every process of the search."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_dataset(config: PipelineConfig, out_dir: str, base_dir: str,
                     progress: bool) -> str:
    from vispipe.data import create_dataset
    from vispipe.data.format import read_dataset_info
    from vispipe.pipeline import _reusable_dataset, resolve_dataset_paths

    dataset_cfg = resolve_dataset_paths(config.dataset, base_dir)
    if not dataset_cfg.output:
        dataset_cfg = dataclasses.replace(dataset_cfg, output=os.path.join(out_dir, "dataset"))
    with _locked(os.path.join(out_dir, ".dataset.lock")):
        if _reusable_dataset(dataset_cfg):
            return read_dataset_info(dataset_cfg.output).path
        return create_dataset(dataset_cfg, progress=progress).path


def _die_with_parent() -> None:
    """In the child: SIGTERM when the search process dies (Linux), so a killed
    search leaves no orphan training."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Objective:
    """Runs one trial: sample, train (or resume a dead attempt), report, score."""

    def __init__(self, config: PipelineConfig, space: list[SearchParam], settings: TuneSettings,
                 dataset_dir: str, out_dir: str, progress: bool):
        self.config, self.space, self.settings = config, space, settings
        self.dataset_dir, self.out_dir, self.progress = dataset_dir, out_dir, progress

    def __call__(self, trial) -> float:
        import optuna

        if trial.user_attrs.get("baseline"):
            # The pipeline as it is: no suggested values, so a baseline outside
            # the space (a deliberately bad default) is run and retried as is.
            values, config = trial.user_attrs["values"], self.config
        else:
            values = suggest(trial, self.space)
            config = apply_values(self.config, values)
        retried = "run_dir" in trial.user_attrs  # A retry of a trial whose process died.
        run_dir = trial.user_attrs.get("run_dir") or os.path.join(
            self.out_dir, _TRIALS_DIR, f"trial-{trial.number:03d}")
        trial.set_user_attr("run_dir", run_dir)
        name = f"{config.name}-{os.path.basename(run_dir)}"
        print(f"Trial {trial.number}: " + ", ".join(f"{k}={_show(v)}" for k, v in values.items())
              + (f" (resuming {run_dir})" if retried else ""), flush=True)
        if self.settings.isolation == "inline":
            pruned = self._inline(trial, config, run_dir, name)
        else:
            pruned = self._in_process(trial, config, run_dir, name)
        from vispipe.train.run_folder import RunFolder

        value = trial_value(RunFolder(run_dir).read_metrics("epoch"), self.settings.metric)
        if pruned:
            raise optuna.TrialPruned(f"trial {trial.number} pruned")
        if value is None:
            raise RuntimeError(f"Trial {trial.number}: run {run_dir} recorded no "
                               f"{self.settings.metric}; does the dataset have a val split?")
        return value

    def _resumable(self, run_dir: str) -> bool:
        from vispipe.train.run_folder import RunFolder

        run = RunFolder(run_dir)
        return run.exists() and run.read_run_info().status != "completed"

    def _inline(self, trial, config: PipelineConfig, run_dir: str, name: str) -> bool:
        from vispipe.train import resume, train
        from vispipe.train.run_folder import RunFolder

        callbacks = [_pruning_callback(trial, self.settings.metric)]
        try:
            if self._resumable(run_dir):
                resume(run_dir, progress=self.progress, callbacks=callbacks)
            elif not RunFolder(run_dir).exists():
                train(self.dataset_dir, run_dir, config.model, config.train, name=name,
                      progress=self.progress, callbacks=callbacks)
        except _Pruned:
            return True
        return False

    def _in_process(self, trial, config: PipelineConfig, run_dir: str, name: str) -> bool:
        from vispipe.train.run_folder import RunFolder

        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        config_path = f"{run_dir}.yaml"
        with open(config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(to_dict(config), f, sort_keys=False)
        command = [sys.executable, "-m", "vispipe.tune.trial", "--config", config_path,
                   "--dataset", self.dataset_dir, "--run", run_dir, "--name", name]
        if not self.progress:
            command.append("--quiet")
        child = subprocess.Popen(command, preexec_fn=_die_with_parent)
        reported, pruned = 0, False
        try:
            while child.poll() is None:
                time.sleep(_POLL_S)
                records = RunFolder(run_dir).read_metrics("epoch")
                for record in records[reported:]:
                    value = record.get(self.settings.metric)
                    if value is not None:
                        trial.report(float(value), int(record["epoch"]))
                        if not pruned and trial.should_prune():
                            pruned = True
                            child.terminate()  # Stops like Ctrl-C: the run is "interrupted".
                reported = len(records)
        finally:
            if child.poll() is None:
                child.terminate()
                child.wait()
        if not pruned and child.returncode != 0:
            raise RuntimeError(f"Trial {trial.number}: training process exited with status "
                               f"{child.returncode}; see {run_dir}/run.json.")
        return pruned


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def tune(config: PipelineConfig, out_dir: str, settings: TuneSettings | None = None, *,
         dataset_dir: str = "", base_dir: str = ".", progress: bool = True) -> TuneResult:
    """Searches hyper-parameters of a pipeline; resumable and shareable between processes.

    Args:
        config: The pipeline: its dataset (unless `dataset_dir`), model and
            training settings are the starting point of every trial.
        out_dir: The search's folder (trial runs, study, reports).
        settings: How to search (default `TuneSettings()`).
        dataset_dir: An existing dataset to use instead of the pipeline's.
        base_dir: Folder the pipeline's relative dataset paths are relative to.
        progress: Progress bars and per-trial lines.

    Returns:
        A `TuneResult` covering every trial of the study.

    Raises:
        ImportError: Optuna is not installed (names the extra).
        ValueError: Invalid settings or search space (named).

    Example:

    ```python
    result = tune(config, "tune/mnist", TuneSettings(trials=12, pruner="median"))
    print(result.best.params, result.best.value)
    ```
    """
    try:
        import optuna
    except ImportError as error:
        raise ImportError("vispipe tune needs Optuna: install vispipe's 'tune' extra "
                          "(pip install 'vispipe[tune]').") from error
    settings = settings or TuneSettings()
    settings.check()
    with warnings.catch_warnings():
        # Heartbeats and retries are "experimental" in Optuna since 2.8.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return _search(config, out_dir, settings, dataset_dir=dataset_dir, base_dir=base_dir,
                       progress=progress)


def _search(config: PipelineConfig, out_dir: str, settings: TuneSettings, *, dataset_dir: str,
            base_dir: str, progress: bool) -> TuneResult:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from vispipe.tune.report import write_reports

    space = parse_space(settings.space)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.join(out_dir, _TRIALS_DIR), exist_ok=True)
    dataset_dir = (os.path.abspath(dataset_dir) if dataset_dir
                   else _prepare_dataset(config, out_dir, base_dir, progress))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _make_study(settings, out_dir, config.name)
    if settings.baseline:
        with _locked(os.path.join(out_dir, ".study.lock")):  # One baseline for all processes.
            if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
                study.enqueue_trial({}, user_attrs={"baseline": True,
                                                    "values": baseline_values(config, space)})
    remaining = settings.trials - _finished_count(study)
    if remaining > 0:
        objective = _Objective(config, space, settings, dataset_dir, out_dir, progress)
        # Failed trials do not count towards `trials`; allow as many again.
        study.optimize(objective, n_trials=remaining + settings.trials, catch=(Exception,),
                       callbacks=[MaxTrialsCallback(settings.trials,
                                                    states=(TrialState.COMPLETE,
                                                            TrialState.PRUNED))])
    result = _collect(study, settings, out_dir)
    write_reports(result, config, space, settings)
    return result


def _collect(study, settings: TuneSettings, out_dir: str) -> TuneResult:
    from optuna.trial import TrialState

    from vispipe.train.run_folder import RunFolder

    trials = study.get_trials(deepcopy=False)
    last_user = {t.user_attrs.get("run_dir"): t.number for t in trials}
    records = []
    for trial in trials:
        run_dir = trial.user_attrs.get("run_dir", "")
        retried_as = last_user.get(run_dir) if run_dir else None
        note = ""
        if retried_as is not None and retried_as != trial.number:
            note = f"process died; retried as trial {retried_as}"
        elif trial.state == TrialState.FAIL and run_dir and RunFolder(run_dir).exists():
            note = RunFolder(run_dir).read_run_info().error or ""
        elif trial.state == TrialState.PRUNED:
            note = f"pruned after epoch {trial.last_step}"
        epochs = len(RunFolder(run_dir).read_metrics("epoch")) if run_dir and not note.startswith(
            "process died") else 0
        duration = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                    if trial.datetime_complete and trial.datetime_start else 0.0)
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = None
        records.append(TrialRecord(
            number=trial.number, state=trial.state.name, value=value,
            params=dict(trial.params or trial.user_attrs.get("values", {})), run_dir=run_dir, epochs=epochs, duration_s=duration,
            baseline=bool(trial.user_attrs.get("baseline")), note=note[:120],
        ))
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None
                and math.isfinite(r.value)]
    direction = METRICS[settings.metric]
    best = None
    if complete:
        pick = max if direction == "maximize" else min
        best = pick(complete, key=lambda r: r.value)
    baseline = next((r for r in records if r.baseline and r.state == "COMPLETE"), None)
    return TuneResult(trials=records, best=best, baseline=baseline, metric=settings.metric,
                      direction=direction, out_dir=out_dir)

