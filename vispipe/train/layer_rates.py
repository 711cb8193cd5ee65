"""Discriminative learning rates: lower rates for layers nearer the input.

When a pretrained backbone is unfrozen, its early layers (generic edges and
textures) should move less than its late ones, and those less than the new
head (Howard & Ruder 2018, fastai's `fine_tune`). `depth_multipliers` spreads
the rates geometrically over the trainable blocks of
`vispipe.models.transfer.backbone_blocks`: the first trainable block gets
`1 / ratio` of the head's rate, the head 1.

`with_rate_multipliers` makes any of vispipe's optimizers apply them: the
rate passed to each variable's update is multiplied by its factor. Every
update rule vispipe offers (SGD with momentum, Adam, AdamW, RMSprop,
Adagrad, Adadelta) is linear in the rate, so this equals a per-layer rate.
Decoupled weight decay keeps the head's rate. The multipliers are part of
the optimizer's config, so checkpoints resume with them.

Example:

```python
optimizer = with_rate_multipliers(make_optimizer(cfg, schedule),
                                  depth_multipliers(model, ratio=100))
model.compile(optimizer=optimizer, ...)
```
"""

from __future__ import annotations

from typing import Sequence

import keras

from vispipe.models.transfer import backbone_blocks

__all__ = ["depth_multipliers", "with_rate_multipliers"]


def depth_multipliers(model: keras.Model, ratio: float) -> list[float]:
    """Per trainable variable: its rate relative to the head's, by depth.

    Args:
        model: The model, with the layers to train already unfrozen.
        ratio: Head rate / rate of the first trainable block (>= 1; 1
            gives every layer the head's rate).

    Returns:
        One factor per variable of `model.trainable_variables`, in order:
        `ratio ** -((n - i) / n)` for the i-th of n trainable blocks
        (0-based), 1 for the head.

    Raises:
        ValueError: `ratio` < 1.
    """
    if ratio < 1:
        raise ValueError(f"model.finetune_lr_mult: expected a number >= 1, got {ratio!r}.")
    blocks = [block for block in backbone_blocks(model) if any(l.trainable for l in block)]
    factor_of: dict[int, float] = {}
    for index, block in enumerate(blocks):
        factor = float(ratio ** (-(len(blocks) - index) / len(blocks)))
        for layer in block:
            for variable in layer.trainable_weights:
                factor_of[id(variable)] = factor
    return [factor_of.get(id(v), 1.0) for v in model.trainable_variables]


class _RateMultipliers:
    """Mix-in: scales the learning rate of each variable's update."""

    def __init__(self, *args, rate_multipliers: Sequence[float] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_multipliers = [float(m) for m in rate_multipliers]

    def build(self, variables):
        if len(variables) != len(self.rate_multipliers):
            raise ValueError(
                f"{type(self).__name__}: {len(self.rate_multipliers)} rate multipliers for "
                f"{len(variables)} trainable variables; compute them for this model."
            )
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        factor = self.rate_multipliers[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "rate_multipliers": self.rate_multipliers}


def _with_multipliers(base: type) -> type:
    cls = type(f"LayerRate{base.__name__}", (_RateMultipliers, base), {
        "__doc__": f"`keras.optimizers.{base.__name__}` with a learning-rate factor per variable.",
        "__module__": __name__,
    })
    return keras.saving.register_keras_serializable(package="vispipe")(cls)


_SCALED = {base: _with_multipliers(base) for base in (
    keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW,
    keras.optimizers.RMSprop, keras.optimizers.Adagrad, keras.optimizers.Adadelta)}


def with_rate_multipliers(optimizer: keras.optimizers.Optimizer,
                          multipliers: Sequence[float]) -> keras.optimizers.Optimizer:
    """The same optimizer (settings and schedule), with a rate factor per variable.

    Args:
        optimizer: A new (unbuilt) optimizer from `make_optimizer`.
        multipliers: One factor per trainable variable of the model it will
            train, in `model.trainable_variables` order.

    Returns:
        An optimizer of the matching `LayerRate*` class.

    Raises:
        TypeError: An optimizer class vispipe does not make.
    """
    cls = _SCALED.get(type(optimizer))
    if cls is None:
        raise TypeError(f"No per-layer rates for {type(optimizer).__name__}.")
    return cls.from_config({**optimizer.get_config(), "rate_multipliers": list(multipliers)})
