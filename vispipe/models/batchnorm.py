"""BatchNorm moving statistics that match the weights they normalize.

A BatchNormalization layer trains on batch statistics but predicts with its
moving averages. Two things keep those averages honest in a short run:

- `suited_momentum`: a momentum short enough that the averages forget their
  initial values (mean 0, variance 1) and follow the weights within an
  epoch. `keras.applications`' MobileNetV2 uses 0.999, a window of ~1000
  steps: after 400 steps two thirds of the initial values remain, and the
  model predicts one class.
- `recompute_statistics` ("precise BN", Wu & Johnson 2021): the population
  mean and variance of every trainable BatchNormalization layer's input,
  averaged over training batches with the current weights, replace the
  moving averages.

Frozen BatchNormalization layers (`trainable=False`) run in inference mode
and are left alone by both.

Example:

```python
set_momentum(model, suited_momentum(steps_per_epoch=50))
recompute_statistics(model, train_images.take(32))
```
"""

from __future__ import annotations

import weakref
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "batchnorm_layers",
    "suited_momentum",
    "set_momentum",
    "recompute_statistics",
]

# The moving average's memory of the epoch's start: momentum ** steps.
_RESIDUE = float(np.exp(-5.0))


def batchnorm_layers(model: keras.Model, trainable_only: bool = True) -> list:
    """The BatchNormalization layers of `model` (nested models included)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += batchnorm_layers(layer, trainable_only)
        elif isinstance(layer, keras.layers.BatchNormalization) and (
                layer.trainable or not trainable_only):
            found.append(layer)
    return found


def suited_momentum(steps_per_epoch: int, ceiling: float = 0.99) -> float:
    """A BatchNorm momentum whose average forgets an epoch's start by its end.

    `momentum ** steps_per_epoch = e**-5` (under 1% left), capped at
    `ceiling`, Keras' default: the window is a fifth of an epoch on a small
    dataset and Keras' usual 100 steps on a large one.

    Args:
        steps_per_epoch: Optimizer steps in one epoch.
        ceiling: The largest momentum returned.

    Returns:
        The momentum, in [0, ceiling].

    Example:

    ```python
    suited_momentum(50)    # 0.905
    suited_momentum(5000)  # 0.99
    ```
    """
    return float(min(ceiling, max(0.0, _RESIDUE ** (1.0 / max(1, steps_per_epoch)))))


def set_momentum(model: keras.Model, momentum: float) -> int:
    """Sets the momentum of every trainable BatchNormalization layer at most to `momentum`.

    Layers already below it keep theirs (vispipe's ResNets use 0.9). The
    value is part of each layer's config, so saved models keep it.

    Returns:
        How many layers were changed.
    """
    changed = 0
    for layer in batchnorm_layers(model):
        if layer.momentum > momentum:
            layer.momentum = momentum
            changed += 1
    return changed


# model -> (which BatchNorm layers train, its training-mode forward pass):
# traced once per set of trainable layers, not at every call.
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward(model: keras.Model, bns: list):
    key = tuple(id(layer) for layer in bns)
    cached = _FORWARDS.get(model)
    if cached is None or cached[0] != key:
        @tf.function(reduce_retracing=True)
        def forward(x):
            model(x, training=True)

        cached = _FORWARDS[model] = (key, forward)
    return cached[1]


def recompute_statistics(model: keras.Model, images: Iterable, max_batches: int) -> int:
    """Replaces moving statistics by their average over training batches.

    Each trainable BatchNormalization layer's moving mean and variance
    become the mean over the batches of the batch mean and (biased) batch
    variance of its input, with the model in training mode (as it trains),
    so they describe the current weights and not those of earlier steps.
    Nothing else changes (the pass computes no gradients).

    Args:
        model: The model, with trainable BatchNormalization layers.
        images: Batches of model inputs (or `(images, labels)` pairs).
        max_batches: Batches to average over at most.

    Returns:
        The number of batches used (0: nothing to do, or no batch).
    """
    bns = batchnorm_layers(model)
    if not bns or max_batches < 1:
        return 0
    momenta = [layer.momentum for layer in bns]
    sums = [[np.zeros(layer.moving_mean.shape, "float64"),
             np.zeros(layer.moving_variance.shape, "float64")] for layer in bns]
    for layer in bns:
        layer.momentum = 0.0  # The moving statistics become the batch's.
    forward = _forward(model, bns)
    used = 0
    try:
        for batch in images:
            if used >= max_batches:
                break
            forward(batch[0] if isinstance(batch, (tuple, list)) else batch)
            for layer, total in zip(bns, sums):
                total[0] += keras.ops.convert_to_numpy(layer.moving_mean)
                total[1] += keras.ops.convert_to_numpy(layer.moving_variance)
            used += 1
    finally:
        for layer, momentum in zip(bns, momenta):
            layer.momentum = momentum
    if used:
        for layer, (mean, variance) in zip(bns, sums):
            layer.moving_mean.assign((mean / used).astype("float32"))
            layer.moving_variance.assign((variance / used).astype("float32"))
    return used
