"""The solver of a run as a Keras optimizer.

`weight_decay` uses Keras 3's optimizer argument for every optimizer: before
each update the weights shrink by `lr * weight_decay * w`. For AdamW this is
the decoupled decay of Loshchilov & Hutter; for plain SGD it equals an L2
penalty `weight_decay / 2 * |w|^2` (Caffe's weight decay); with momentum or
adaptive optimizers it is applied outside the momentum/adaptive terms.

Example:

```python
schedule = make_schedule(train_cfg.lr, total_steps)
optimizer = make_optimizer(train_cfg, schedule)
```
"""

from __future__ import annotations

import keras

from vispipe.configs import OPTIMIZERS, TrainConfig

__all__ = ["make_optimizer"]


def make_optimizer(cfg: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    """Builds the optimizer named by `cfg.optimizer`.

    Args:
        cfg: The solver options: `optimizer`, `momentum` (sgd, rmsprop),
            `nesterov` (sgd), `weight_decay` (all).
        schedule: The learning rate: a `LearningRateSchedule` or a float.

    Returns:
        A Keras optimizer.

    Raises:
        ValueError: Unknown optimizer (the message lists `OPTIMIZERS`), or a
            momentum outside [0, 1) or a negative weight decay.

    Example:

    ```python
    opt = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=1e-4), 1e-3)
    ```
    """
    name = cfg.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(
            f"train.optimizer: unknown optimizer {name!r}; expected one of "
            f"{', '.join(OPTIMIZERS)}."
        )
    if not 0 <= cfg.momentum < 1:
        raise ValueError(f"train.momentum: expected a value in [0, 1), got {cfg.momentum!r}.")
    if not cfg.weight_decay >= 0:
        raise ValueError(
            f"train.weight_decay: expected a value >= 0, got {cfg.weight_decay!r}."
        )
    # Keras takes None for "no decay"; AdamW always decays (0 is allowed).
    decay = cfg.weight_decay or None
    if name == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=decay
        )
    if name == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=decay)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(schedule, momentum=cfg.momentum, weight_decay=decay)
    if name == "adagrad":
        return keras.optimizers.Adagrad(schedule, weight_decay=decay)
    return keras.optimizers.Adadelta(schedule, weight_decay=decay)
