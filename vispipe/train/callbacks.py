"""Keras callbacks that keep a run folder up to date while `fit` runs.

The trainer calls `model.fit` once per epoch (see `vispipe.train.trainer`),
so these callbacks keep their state across `fit` calls and take the epoch
from Keras' absolute epoch index.

Example:

```python
meter = ThroughputMeter(batch_size=64, images_per_epoch=60000)
callbacks = [meter, MetricsLogger(run, steps_per_epoch=938,
                                  log_every_steps=50, meter=meter)]
```
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import keras
from tqdm import tqdm

from vispipe.fileio import atomic_path
from vispipe.train.plots import plot_curves
from vispipe.train.run_folder import RunFolder
from vispipe.train.run_info import RunWarning

__all__ = [
    "TrainingDivergedError",
    "DivergenceGuard",
    "save_model_atomic",
    "current_lr",
    "ThroughputMeter",
    "MetricsLogger",
    "Checkpointer",
    "BestModelSaver",
    "CurvePlotter",
    "ValAccuracyEarlyStopping",
    "TqdmProgress",
    "PreciseBatchNorm",
    "ChanceAccuracyGuard",
]

_METRIC_KEYS = ("loss", "accuracy", "top5")


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Saves `model` (with optimizer state) through `atomic_path` (the `.keras` kept)."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def current_lr(model: keras.Model) -> float:
    """The learning rate of the optimizer's next update."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None



def _step(model: keras.Model) -> int:
    """The optimizer's step count (a mirrored variable under tf.distribute)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))

class ThroughputMeter(keras.callbacks.Callback):
    """Measures training images per second (validation excluded).

    Args:
        batch_size: Images per step.
        images_per_epoch: Images one epoch trains on (the last batch may be
            partial).

    Example:

    ```python
    meter = ThroughputMeter(64, 60000)
    model.fit(ds, callbacks=[meter])
    print(meter.epoch_images_per_s)
    ```
    """

    def __init__(self, batch_size: int, images_per_epoch: int):
        super().__init__()
        self.batch_size = batch_size
        self.images_per_epoch = images_per_epoch
        self.epoch_images_per_s: float | None = None
        self._epoch_start = self._last_time = time.perf_counter()
        self._last_batch = -1
        self._epoch_end: float | None = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = self._last_time = time.perf_counter()
        self._last_batch = -1
        self._epoch_end = None

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._epoch_end = time.perf_counter()

    def since_last_call(self, batch: int) -> float:
        """Images/s over the batches since the previous call (or the epoch start)."""
        now = time.perf_counter()
        images = (batch - self._last_batch) * self.batch_size
        rate = images / max(now - self._last_time, 1e-9)
        self._last_time, self._last_batch = now, batch
        return rate

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        end = self._epoch_end or time.perf_counter()
        self.epoch_images_per_s = self.images_per_epoch / max(end - self._epoch_start, 1e-9)


class MetricsLogger(keras.callbacks.Callback):
    """Appends step and epoch records to `metrics.jsonl`, one flushed line each.

    Step records (every `log_every_steps` optimizer steps): `{"kind": "step",
    "epoch" (fractional), "step", "loss", "accuracy", "lr", "images_per_s",
    "time"}`; loss and accuracy are Keras' running means over the epoch so
    far. Epoch records: `{"kind": "epoch", "epoch" (epochs completed),
    "step", "loss", "accuracy", "top5", "lr", "images_per_s", "time"}` plus
    "val_loss", "val_accuracy", "val_top5" after a validation. "lr" is the
    rate of the next update and "time" the training seconds since the run
    began.

    Args:
        run: The run folder.
        steps_per_epoch: Steps in one epoch.
        log_every_steps: Step-record interval.
        meter: Source of the images/s figures.
        time_offset: Seconds already trained (a resumed run continues).
    """

    def __init__(self, run: RunFolder, *, steps_per_epoch: int, log_every_steps: int,
                 meter: ThroughputMeter, time_offset: float = 0.0):
        super().__init__()
        self.run = run
        self.steps_per_epoch = steps_per_epoch
        self.log_every_steps = log_every_steps
        self.meter = meter
        self._start = time.perf_counter() - time_offset
        self._epoch = 0

    def _append(self, record: dict[str, Any]) -> None:
        # Open, write, close: a kill loses at most the line being written.
        with open(self.run.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def _elapsed(self) -> float:
        return round(time.perf_counter() - self._start, 3)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        step = _step(self.model)
        if step % self.log_every_steps:
            return
        logs = logs or {}
        self._append({
            "kind": "step",
            "epoch": round(self._epoch + (batch + 1) / self.steps_per_epoch, 4),
            "step": step,
            "loss": _finite(logs.get("loss")),
            "accuracy": _finite(logs.get("accuracy")),
            "lr": current_lr(self.model),
            "images_per_s": round(self.meter.since_last_call(batch), 1),
            "time": self._elapsed(),
        })

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        record: dict[str, Any] = {
            "kind": "epoch",
            "epoch": epoch + 1,
            "step": _step(self.model),
        }
        for key in _METRIC_KEYS:
            record[key] = _finite(logs.get(key))
        record["lr"] = current_lr(self.model)
        record["images_per_s"] = round(self.meter.epoch_images_per_s or 0.0, 1)
        record["time"] = self._elapsed()
        for key in _METRIC_KEYS:
            if f"val_{key}" in logs:
                record[f"val_{key}"] = _finite(logs[f"val_{key}"])
        self._append(record)


class Checkpointer(keras.callbacks.Callback):
    """Saves `checkpoints/epoch-NNNN.keras`, then points `latest.json` at it.

    Saves every `interval` epochs, after the last epoch (`final_epoch`) and
    when training stops early; `interval` 0 saves only then.

    Args:
        run: The run folder.
        interval: Epochs between checkpoints.
        final_epoch: Epoch count of the whole run.
    """

    def __init__(self, run: RunFolder, interval: int, final_epoch: int):
        super().__init__()
        self.run = run
        self.interval = interval
        self.final_epoch = final_epoch
        # The model to save when `fit` trains another one that shares its
        # layers (the head on cached features); None: the model being fit.
        self.saved_model: keras.Model | None = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        done = epoch + 1
        due = (self.interval and done % self.interval == 0) or done >= self.final_epoch
        if due or self.model.stop_training:
            self.save(done)

    def save(self, epoch: int) -> None:
        """Checkpoints the model as having completed `epoch` epochs."""
        model = self.saved_model or self.model
        save_model_atomic(model, self.run.checkpoint_path(epoch))
        self.run.set_latest_checkpoint(epoch, _step(model))


class BestModelSaver(keras.callbacks.Callback):
    """Saves `best.keras` whenever validation accuracy beats the best so far.

    Args:
        path: The `.keras` file.
        best: Best validation accuracy already reached (a resumed run).
    """

    def __init__(self, path: str, best: float | None = None):
        super().__init__()
        self.path = path
        self.best = best
        self.saved_model: keras.Model | None = None  # As `Checkpointer.saved_model`.

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = _finite((logs or {}).get("val_accuracy"))
        if value is not None and (self.best is None or value > self.best):
            self.best = value
            save_model_atomic(self.saved_model or self.model, self.path)


class CurvePlotter(keras.callbacks.Callback):
    """Redraws `curves.png` from `metrics.jsonl` after every epoch."""

    def __init__(self, run: RunFolder, title: str = ""):
        super().__init__()
        self.run = run
        self.title = title

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        plot_curves(self.run.read_metrics("epoch"), self.run.curves_path, self.title)


class TrainingDivergedError(ArithmeticError):
    """The training loss became NaN or infinite."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a run whose loss is no longer finite, before it saves anything.

    Keras would otherwise train on, write NaN checkpoints and report 10%
    accuracy; the run is marked failed with this message instead, and the
    snapshots of earlier epochs stay usable.
    """

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"The training loss became {float(loss)} at step {_step(self.model)} "
                f"(learning rate {current_lr(self.model):.3g}): training diverged. "
                "Lower train.lr.base_lr (`vispipe lr-find` suggests one), add a "
                "warm-up, or use an optimizer with adaptive steps such as adam."
            )


class ValAccuracyEarlyStopping(keras.callbacks.Callback):
    """Stops after `patience` validations without a better val accuracy.

    Args:
        patience: Validations without improvement tolerated.
        history: Validation accuracies already recorded (a resumed run), in
            order.

    Attributes:
        stopped: Whether it asked training to stop.
    """

    def __init__(self, patience: int, history: list[float] | None = None):
        super().__init__()
        self.patience = patience
        self.best: float | None = None
        self.wait = 0
        self.stopped = False
        for value in history or []:
            self._update(value)

    def _update(self, value: float) -> None:
        if self.best is None or value > self.best:
            self.best, self.wait = value, 0
        else:
            self.wait += 1

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = _finite((logs or {}).get("val_accuracy"))
        if value is None:
            return
        self._update(value)
        if self.wait >= self.patience:
            self.stopped = True
            self.model.stop_training = True


class TqdmProgress(keras.callbacks.Callback):
    """One tqdm bar per epoch, "Epoch e/N", with loss and accuracy."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self._bar: tqdm | None = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._bar = tqdm(total=self.steps_per_epoch, unit="step",
                         desc=f"Epoch {epoch + 1}/{self.epochs}", leave=True)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}",
                              acc=f"{logs.get('accuracy', float('nan')):.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        postfix = {"loss": f"{logs.get('loss', float('nan')):.4f}",
                   "acc": f"{logs.get('accuracy', float('nan')):.4f}"}
        if "val_accuracy" in logs:
            postfix["val_loss"] = f"{logs['val_loss']:.4f}"
            postfix["val_acc"] = f"{logs['val_accuracy']:.4f}"
        self._bar.set_postfix(postfix)
        self._bar.close()


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recomputes BatchNorm statistics before each validation and each save.

    After the last training step of an epoch (before Keras validates, and
    before the checkpoint callbacks that follow this one), every trainable
    BatchNormalization layer's moving mean and variance are replaced by
    their average over `max_batches` training batches with the epoch's final
    weights (`vispipe.models.batchnorm.recompute_statistics`), so validation,
    checkpoints and the final model predict with statistics that match the
    weights.

    Args:
        batches: `batches(epoch)` -> an iterable of training batches.
        max_batches: Batches to average over (0: off).
    """

    def __init__(self, batches, max_batches: int):
        super().__init__()
        self.batches = batches
        self.max_batches = max_batches
        self._epoch = 0
        self._done = False

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch, self._done = epoch, False

    def _recompute(self) -> None:
        if self._done or not self.max_batches:
            return
        from vispipe.models.batchnorm import recompute_statistics

        recompute_statistics(self.model, self.batches(self._epoch), self.max_batches)
        self._done = True

    def on_test_begin(self, logs=None) -> None:
        self._recompute()  # Keras validates before on_epoch_end.

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._recompute()


class ChanceAccuracyGuard(keras.callbacks.Callback):
    """Warns when validation accuracy stays at chance while training accuracy rises.

    A network that learns (training accuracy at least `margin` above chance
    and `margin` above its first epoch) but validates at chance (within
    `tolerance` of the share of the most frequent validation class) for two
    validations in a row is broken in inference mode, not untrained. The
    warning is printed once, logged, and handed to `on_warning` (the trainer
    records it in run.json).

    Args:
        chance: Accuracy of always predicting the most frequent val class.
        likely_cause: What to name as the probable cause.
        on_warning: Called with the warning (a `RunWarning`).
        margin: Rise of training accuracy that counts as learning.
        tolerance: Distance from chance that counts as chance.
    """

    KIND = "val_accuracy_at_chance"

    def __init__(self, chance: float, likely_cause: str, on_warning=None,
                 margin: float = 0.1, tolerance: float = 0.02):
        super().__init__()
        self.chance = chance
        self.likely_cause = likely_cause
        self.on_warning = on_warning
        self.margin = margin
        self.tolerance = tolerance
        self.first_accuracy: float | None = None
        self.at_chance = 0
        self.warned = False

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        accuracy = _finite(logs.get("accuracy"))
        if accuracy is not None and self.first_accuracy is None:
            self.first_accuracy = accuracy
        value = _finite(logs.get("val_accuracy"))
        if value is None or accuracy is None:
            return
        self.at_chance = self.at_chance + 1 if abs(value - self.chance) <= self.tolerance else 0
        learning = (accuracy >= self.chance + self.margin
                    and accuracy >= self.first_accuracy + self.margin)
        if self.warned or self.at_chance < 2 or not learning:
            return
        self.warned = True
        message = (f"Validation accuracy has stayed at chance ({value:.1%}; chance "
                   f"{self.chance:.1%}) while training accuracy rose to {accuracy:.1%}: the "
                   f"model does not work in inference mode. Likely cause: {self.likely_cause}")
        print(f"WARNING: {message}", flush=True)
        logging.getLogger(__name__).warning("%s", message)
        if self.on_warning is not None:
            self.on_warning(RunWarning(epoch=epoch + 1, kind=self.KIND, message=message))
