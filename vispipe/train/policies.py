"""Learning-rate policies as plain formulas: validation and NumPy evaluation.

Imports neither TensorFlow nor Keras, so the web UI's live preview of a
policy is instant; `vispipe.train.schedules` builds the Keras schedule from
the same `rate` formula (see its docstring for the policies).

Example:

```python
lrs = lr_at(LRPolicyConfig(policy="step", step_size=33), 3000, np.arange(3000))
```
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vispipe.configs import LR_POLICIES, LRPolicyConfig

__all__ = ["ONECYCLE_PCT_START", "ONECYCLE_FINAL_DIV", "validate_policy", "rate", "lr_at"]

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


def rate(cfg: LRPolicyConfig, total_steps: int, s, xp):
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
    rest = rate(after, total_steps - warmup_steps, xp.maximum(s - warmup_steps, 0.0), xp)
    return xp.where(s < warmup_steps, base * s / warmup_steps, rest)



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
    return np.asarray(rate(cfg, total_steps, s, np), dtype=np.float64)
