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
import math
from typing import Any

import keras
import numpy as np

from vispipe.configs import LR_POLICIES, LRPolicyConfig
from vispipe.train.plots import plot_lr_curve

__all__ = [
    "ONECYCLE_PCT_START",
    "ONECYCLE_FINAL_DIV",
    "PolicySchedule",
    "validate_policy",
    "make_schedule",
    "lr_at",
    "plot_schedule",
]

ONECYCLE_PCT_START = 0.25
ONECYCLE_FINAL_DIV = 1e4


def _iterations(percent: float, total_steps: int) -> int:
    # DIGITS: int(math.ceil(float(value) * scale)) with scale = max_iter / 100.
    return int(math.ceil(float(percent) * (float(total_steps) / 100.0)))


def validate_policy(cfg: LRPolicyConfig, total_steps: int, where: str = "lr") -> None:
    """Checks a policy's parameters for `total_steps` iterations.

    Args:
        cfg: The policy.
        total_steps: Iterations of the whole run.
        where: Prefix naming the config section in messages.

    Raises:
        ValueError: The message names the field, the value and what was
            expected.
    """
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps: expected an integer >= 1, got {total_steps!r}.")
    if cfg.policy not in LR_POLICIES:
        raise ValueError(
            f"{where}.policy: unknown policy {cfg.policy!r}; expected one of "
            f"{', '.join(LR_POLICIES)}."
        )
    if not cfg.base_lr > 0:
        raise ValueError(f"{where}.base_lr: expected a number > 0, got {cfg.base_lr!r}.")
    policy = cfg.policy
    if policy in ("step", "multistep") and not cfg.gamma > 0:
        raise ValueError(f"{where}.gamma: {policy} needs gamma > 0, got {cfg.gamma!r}.")
    if policy == "exp" and not cfg.gamma > 0:
        raise ValueError(f"{where}.gamma: exp needs gamma > 0, got {cfg.gamma!r}.")
    if policy == "inv" and not cfg.gamma >= 0:
        raise ValueError(f"{where}.gamma: inv needs gamma >= 0, got {cfg.gamma!r}.")
    if policy in ("inv", "poly") and not cfg.power >= 0:
        raise ValueError(f"{where}.power: {policy} needs power >= 0, got {cfg.power!r}.")
    if policy in ("step", "sigmoid") and not cfg.step_size > 0:
        raise ValueError(
            f"{where}.step_size: {policy} needs a step size > 0 (percent of "
            f"training), got {cfg.step_size!r}."
        )
    if policy == "multistep":
        steps = list(cfg.steps)
        if not steps or any(not v > 0 for v in steps) or steps != sorted(set(steps)):
            raise ValueError(
                f"{where}.steps: multistep needs increasing percentages > 0, got {steps!r}."
            )
    if policy == "cosine" and not 0 <= cfg.min_lr < cfg.base_lr:
        raise ValueError(
            f"{where}.min_lr: cosine needs 0 <= min_lr < base_lr={cfg.base_lr}, "
            f"got {cfg.min_lr!r}."
        )
    if policy == "onecycle" and not cfg.max_lr_factor >= 1:
        raise ValueError(
            f"{where}.max_lr_factor: onecycle needs a factor >= 1, got {cfg.max_lr_factor!r}."
        )
    if policy == "warmup":
        if not 0 < cfg.warmup_percent < 100:
            raise ValueError(
                f"{where}.warmup_percent: warmup needs a percentage in (0, 100), "
                f"got {cfg.warmup_percent!r}."
            )
        warmup_steps = _iterations(cfg.warmup_percent, total_steps)
        if warmup_steps >= total_steps:
            raise ValueError(
                f"{where}.warmup_percent: {cfg.warmup_percent}% of {total_steps} "
                f"steps leaves no steps after the warm-up."
            )
        if cfg.after_warmup == "warmup" or cfg.after_warmup not in LR_POLICIES:
            valid = [p for p in LR_POLICIES if p != "warmup"]
            raise ValueError(
                f"{where}.after_warmup: expected one of {', '.join(valid)}, "
                f"got {cfg.after_warmup!r}."
            )
        validate_policy(
            dataclasses.replace(cfg, policy=cfg.after_warmup),
            total_steps - warmup_steps, where,
        )


def _rate(cfg: LRPolicyConfig, total_steps: int, s, xp):
    """The policy's LR at iterations `s` with array module `xp`.

    `xp` is `numpy` or `keras.ops`, which share the functions used here, so
    the Keras schedule and the NumPy reference are one formula.
    """
    base, gamma, power = cfg.base_lr, cfg.gamma, cfg.power
    total = float(total_steps)
    scale = total / 100.0
    policy = cfg.policy
    if policy == "fixed":
        return s * 0.0 + base
    if policy == "step":
        k = _iterations(cfg.step_size, total_steps)
        return base * xp.power(gamma, xp.floor(s / k))
    if policy == "multistep":
        passed = s * 0.0
        for value in cfg.steps:
            passed = passed + xp.where(s >= _iterations(value, total_steps), 1.0, 0.0)
        return base * xp.power(gamma, passed)
    if policy == "exp":
        return base * xp.power(gamma, s / scale)
    if policy == "inv":
        return base * xp.power(1.0 + (gamma / scale) * s, -power)
    if policy == "poly":
        return base * xp.power(1.0 - xp.minimum(s, total) / total, power)
    if policy == "sigmoid":
        k = _iterations(cfg.step_size, total_steps)
        return base / (1.0 + xp.exp((gamma / scale) * (s - k)))
    if policy == "cosine":
        progress = xp.minimum(s, total) / total
        return cfg.min_lr + (base - cfg.min_lr) * 0.5 * (1.0 + xp.cos(math.pi * progress))
    if policy == "onecycle":
        start, end = base / cfg.max_lr_factor, base / ONECYCLE_FINAL_DIV
        progress = xp.minimum(s, total) / total
        up = progress / ONECYCLE_PCT_START
        down = (progress - ONECYCLE_PCT_START) / (1.0 - ONECYCLE_PCT_START)
        rising = start + (base - start) * 0.5 * (1.0 - xp.cos(math.pi * up))
        falling = end + (base - end) * 0.5 * (1.0 + xp.cos(math.pi * down))
        return xp.where(progress < ONECYCLE_PCT_START, rising, falling)
    # warmup
    warmup_steps = _iterations(cfg.warmup_percent, total_steps)
    after = dataclasses.replace(cfg, policy=cfg.after_warmup)
    rest = _rate(after, total_steps - warmup_steps, xp.maximum(s - warmup_steps, 0.0), xp)
    return xp.where(s < warmup_steps, base * s / warmup_steps, rest)


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
            _rate(self._cfg, self.total_steps, s, keras.ops), "float32"
        )

    def get_config(self) -> dict[str, Any]:
        return {"policy": self.policy, "total_steps": self.total_steps, "scale": self.scale}


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


def lr_at(cfg: LRPolicyConfig, total_steps: int, steps: np.ndarray) -> np.ndarray:
    """The policy's learning rate at iterations `steps`, in NumPy (float64).

    Args:
        cfg: The policy.
        total_steps: Iterations of the whole run.
        steps: 0-based iterations.

    Returns:
        An array of learning rates, shaped like `steps`.

    Example:

    ```python
    lr_at(LRPolicyConfig(policy="poly", power=2), 100, np.arange(100))
    ```
    """
    validate_policy(cfg, total_steps)
    s = np.asarray(steps, dtype=np.float64)
    return np.asarray(_rate(cfg, total_steps, s, np), dtype=np.float64)


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
