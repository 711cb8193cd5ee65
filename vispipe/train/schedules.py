"""Learning-rate policies of DIGITS/Caffe, plus cosine, one-cycle and warm-up.

`s` is the 0-based iteration (Keras' `optimizer.iterations`: the number of
updates already done) and `T` the total number of iterations of the run.
DIGITS gives `step_size` and `steps` in percent of training and converts its
parameters into Caffe's per-iteration ones (digits/model/tasks/
caffe_train.py) with `scale = T / 100`; the same conversion is done here:

- fixed: `lr`.
- step: `lr * gamma ** floor(s / k)` with `k = ceil(step_size * scale)`.
- multistep: `lr * gamma ** n`, `n` = how many `ceil(steps[i] * scale)` are
  `<= s`.
- exp: `lr * gamma ** (s / scale)` (Caffe's gamma is `gamma ** (1 / scale)`:
  the LR is multiplied by `gamma` every 1% of training).
- inv: `lr * (1 + (gamma / scale) * s) ** -power`.
- poly: `lr * (1 - s / T) ** power`.
- sigmoid: `lr / (1 + exp((gamma / scale) * (s - k)))` with `k` as for
  step (Caffe's gamma is `-gamma / scale`, so a positive gamma decreases
  the LR around `step_size` percent).
- cosine: `min_lr + (lr - min_lr) * (1 + cos(pi * s / T)) / 2`.
- onecycle: fastai's `fit_one_cycle` with `lr_max = lr`, `div =
  max_lr_factor`, `pct_start = 0.25` and a final LR of `lr / 1e4`: cosine
  from `lr / max_lr_factor` up to `lr` over the first 25% of training, then
  cosine down to `lr / 1e4`.
- warmup: `lr * s / W` for `s < W = ceil(warmup_percent * scale)`, then the
  `after_warmup` policy run over the remaining `T - W` iterations (its
  percentages are of those).

`make_schedule` returns a serializable Keras schedule (saved with the
optimizer in `.keras` files); `lr_at` evaluates the same formulas in NumPy.

Example:

```python
cfg = LRPolicyConfig(policy="step", base_lr=0.01, gamma=0.1, step_size=33)
schedule = make_schedule(cfg, total_steps=3000)
lrs = lr_at(cfg, 3000, np.arange(3000))
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from vispipe.configs import LRPolicyConfig
from vispipe.train.plots import plot_lr_curve
from vispipe.train.policies import (ONECYCLE_FINAL_DIV, ONECYCLE_PCT_START, lr_at, rate,
                                    validate_policy)

__all__ = [
    "ONECYCLE_PCT_START",
    "ONECYCLE_FINAL_DIV",
    "PolicySchedule",
    "ReplicaScaledSchedule",
    "validate_policy",
    "make_schedule",
    "lr_at",
    "plot_schedule",
]


@keras.saving.register_keras_serializable(package="vispipe")
class PolicySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A `LRPolicyConfig` over `total_steps` iterations, times `scale`.

    Args:
        policy: The policy, as `dataclasses.asdict(LRPolicyConfig)`.
        total_steps: Iterations of the whole run.
        scale: Constant factor (fine-tuning after a frozen phase uses
            `ModelConfig.finetune_lr_factor`).

    Example:

    ```python
    schedule = PolicySchedule(dataclasses.asdict(cfg), total_steps=1000)
    optimizer = keras.optimizers.SGD(schedule)
    ```
    """

    def __init__(self, policy: dict[str, Any], total_steps: int, scale: float = 1.0):
        self.policy = dict(policy)
        self.total_steps = int(total_steps)
        self.scale = float(scale)
        self._cfg = LRPolicyConfig(**self.policy)
        validate_policy(self._cfg, self.total_steps)

    def __call__(self, step):
        s = keras.ops.cast(step, "float32")
        return self.scale * keras.ops.cast(
            rate(self._cfg, self.total_steps, s, keras.ops), "float32"
        )

    def get_config(self) -> dict[str, Any]:
        return {"policy": self.policy, "total_steps": self.total_steps, "scale": self.scale}


@keras.saving.register_keras_serializable(package="vispipe")
class ReplicaScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule multiplied by `factor`, reached by a linear ramp.

    `lr(s) = inner(s) * (1 + (factor - 1) * min(1, s / warmup_steps))`: the
    gradual warm-up of Goyal et al. (2017) from the single-replica LR to
    `factor` times it over `warmup_steps` (0: at once).

    Args:
        inner: The single-replica schedule.
        factor: The replica count.
        warmup_steps: Steps of the ramp.

    Example:

    ```python
    lr = ReplicaScaledSchedule(make_schedule(cfg.lr, 1000), 4.0, 100)
    ```
    """

    def __init__(self, inner, factor: float, warmup_steps: int):
        if isinstance(inner, dict):
            inner = keras.saving.deserialize_keras_object(inner)
        self.inner = inner
        self.factor = float(factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        ramp = (keras.ops.minimum(1.0, step / max(self.warmup_steps, 1)) if self.warmup_steps
                else 1.0)
        return self.inner(step) * (1.0 + (self.factor - 1.0) * ramp)

    def get_config(self) -> dict[str, Any]:
        return {"inner": keras.saving.serialize_keras_object(self.inner),
                "factor": self.factor, "warmup_steps": self.warmup_steps}


def make_schedule(
    cfg: LRPolicyConfig, total_steps: int, *, scale: float = 1.0
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The Keras schedule of a policy (see the module docstring for formulas).

    Args:
        cfg: The policy.
        total_steps: Iterations of the whole run (epochs * steps per epoch).
        scale: Constant factor on the whole schedule.

    Returns:
        A serializable `PolicySchedule`.

    Raises:
        ValueError: An invalid parameter; the message names the field.

    Example:

    ```python
    optimizer = keras.optimizers.SGD(make_schedule(LRPolicyConfig(), 1000))
    ```
    """
    return PolicySchedule(dataclasses.asdict(cfg), total_steps, scale)



def plot_schedule(
    cfg: LRPolicyConfig,
    total_steps: int,
    path: str,
    steps_per_epoch: int | None = None,
) -> str:
    """Writes a PNG of the learning rate over a run.

    Args:
        cfg: The policy.
        total_steps: Iterations of the whole run.
        path: The PNG to write.
        steps_per_epoch: When given, the x axis is in epochs.

    Returns:
        The absolute path of the PNG.

    Example:

    ```python
    plot_schedule(LRPolicyConfig(policy="onecycle"), 1000, "lr.png", 100)
    ```
    """
    steps = np.arange(total_steps)
    lrs = lr_at(cfg, total_steps, steps)
    if steps_per_epoch:
        x, xlabel = steps / float(steps_per_epoch), "epoch"
    else:
        x, xlabel = steps, "iteration"
    title = f"Learning rate: {cfg.policy} (base_lr {cfg.base_lr:g}, {total_steps} steps)"
    return plot_lr_curve(x, lrs, path, xlabel=xlabel, title=title)
