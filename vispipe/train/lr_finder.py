"""Leslie Smith's learning-rate range test ("LR finder").

A fresh model trains for at most `num_steps` steps while the learning rate
grows exponentially from `start_lr` to `end_lr`; the loss is smoothed with
fastai's debiased exponential moving average (beta 0.98) and the test stops
once the smoothed loss exceeds 4x its minimum (divergence). The model is
discarded: nothing but the plot and a JSON of the curve is written.

The suggestion is fastai's "steep" rule: the learning rate where the
smoothed loss falls fastest, i.e. the minimum of d(loss)/d(log lr), ignoring
the first 10% and last 5% of the recorded points (start-up noise and the
divergence).

Example:

```python
result = find_lr("datasets/mnist", ModelConfig(name="lenet"), TrainConfig())
print(result.suggested_lr, result.plot_path)
```
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from vispipe.configs import ModelConfig, TrainConfig
from vispipe.data.format import read_dataset_info
from vispipe.data.inputs import make_dataset
from vispipe.models import build_classifier
from vispipe.train.device import configure_device, seed_everything
from vispipe.train.optimizers import make_optimizer
from vispipe.train.plots import plot_lr_range_test
from vispipe.fileio import write_json_atomic

__all__ = ["SMOOTHING_BETA", "DIVERGENCE_FACTOR", "LRFinderResult", "find_lr", "suggest_lr"]

SMOOTHING_BETA = 0.98
DIVERGENCE_FACTOR = 4.0


@dataclass
class LRFinderResult:
    """Outcome of a range test.

    Attributes:
        lrs: Learning rate of each recorded step.
        losses: Smoothed loss after each step.
        suggested_lr: The steepest-descent learning rate.
        plot_path: The PNG of loss against learning rate.
    """

    lrs: list[float]
    losses: list[float]
    suggested_lr: float
    plot_path: str


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The LR of steepest descent of the smoothed loss against log LR.

    Args:
        lrs: Increasing learning rates.
        losses: Smoothed losses at those rates.

    Returns:
        One of `lrs`.

    Raises:
        ValueError: Fewer than 3 points.

    Example:

    ```python
    suggest_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.3, 2.2, 1.5, 3.0])
    ```
    """
    if len(lrs) < 3:
        raise ValueError(
            f"The range test recorded {len(lrs)} step(s); at least 3 are needed for a "
            "suggestion (raise num_steps or start_lr lower)."
        )
    n = len(lrs)
    lo, hi = n // 10, n - n // 20
    if hi - lo < 3:
        lo, hi = 0, n
    gradient = np.gradient(np.asarray(losses[lo:hi]), np.log10(np.asarray(lrs[lo:hi])))
    return float(lrs[lo + int(np.argmin(gradient))])


def _compiled_model(info, model_cfg: ModelConfig, train_cfg: TrainConfig, schedule):
    """A fresh model of the run's network, compiled with its optimizer on `schedule`."""
    model = build_classifier(model_cfg, info, train_cfg.normalization)
    if train_cfg.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=train_cfg.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=make_optimizer(train_cfg, schedule), loss=loss)
    return model


def _range_test(model, ds, schedule, num_steps: int,
                progress: bool) -> tuple[list[float], list[float]]:
    """Trains step by step as the LR grows; `(lrs, smoothed losses)` until divergence."""
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    batches = ds.take(num_steps).as_numpy_iterator()
    for step, (images, labels) in enumerate(tqdm(batches, total=num_steps, unit="step",
                                                 desc="LR range test", disable=not progress)):
        lr = float(schedule(step))
        value = float(model.train_on_batch(images, labels, return_dict=True)["loss"])
        if not math.isfinite(value):
            break
        average = SMOOTHING_BETA * average + (1 - SMOOTHING_BETA) * value
        smoothed = average / (1 - SMOOTHING_BETA ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > DIVERGENCE_FACTOR * best:
            break
    return lrs, losses


def find_lr(
    dataset_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    out_dir: str | None = None,
    progress: bool = True,
) -> LRFinderResult:
    """Runs the LR range test on the training split.

    Uses the run's network, optimizer (with its momentum and weight decay),
    batch size, augmentation, normalization and label smoothing.

    Args:
        dataset_dir: The dataset folder.
        model_cfg: The network.
        train_cfg: The solver (its LR policy is not used).
        start_lr: First learning rate.
        end_lr: Last learning rate (reached at step `num_steps - 1`).
        num_steps: Steps at most (the data repeats as needed).
        out_dir: Folder for `lr_find.png` and `lr_find.json`; default: a
            new temporary folder.
        progress: Show a progress bar.

    Returns:
        An `LRFinderResult`.

    Raises:
        ValueError: `0 < start_lr < end_lr` does not hold, `num_steps < 3`,
            or the loss diverged before 3 steps.

    Example:

    ```python
    result = find_lr("datasets/cifar10", ModelConfig(name="resnet18"),
                     TrainConfig(optimizer="sgd", batch_size=128), out_dir="lr")
    ```
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(
            f"start_lr and end_lr: expected 0 < start_lr < end_lr, got start_lr={start_lr!r}, "
            f"end_lr={end_lr!r}."
        )
    if num_steps < 3:
        raise ValueError(f"num_steps: expected an integer >= 3, got {num_steps!r}.")
    info = read_dataset_info(dataset_dir)
    seed_everything(train_cfg.seed)
    configure_device(train_cfg.mixed_precision)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        start_lr, decay_steps=num_steps - 1, decay_rate=end_lr / start_lr
    )
    model = _compiled_model(info, model_cfg, train_cfg, schedule)
    ds = make_dataset(info, "train", train_cfg.batch_size, training=True,
                      augment=train_cfg.augment, seed=train_cfg.seed, cache=train_cfg.cache,
                      repeat=True)
    if train_cfg.label_smoothing:
        depth = info.num_classes
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, depth)))
    lrs, losses = _range_test(model, ds, schedule, num_steps, progress)
    suggested = suggest_lr(lrs, losses)

    out_dir = out_dir or tempfile.mkdtemp(prefix="vispipe-lr-find-")
    os.makedirs(out_dir, exist_ok=True)
    plot_path = plot_lr_range_test(lrs, losses, suggested, os.path.join(out_dir, "lr_find.png"))
    write_json_atomic(os.path.join(out_dir, "lr_find.json"), {
        "lrs": lrs, "losses": losses, "suggested_lr": suggested,
        "start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
        "rule": "steepest descent of the smoothed loss (fastai 'steep')",
    })
    return LRFinderResult(lrs=lrs, losses=losses, suggested_lr=suggested, plot_path=plot_path)
