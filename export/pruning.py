"""Magnitude pruning for Keras 3 models, with tfmot's `PolynomialDecay` semantics.

`tensorflow-model-optimization` wraps only tf-keras (Keras 2) layers, so
this module re-implements its magnitude pruning for Keras 3: every Conv /
Dense kernel (depthwise and separable ones included, as tfmot does) gets a
binary mask; at the schedule's update steps the mask
keeps the largest-magnitude weights; after every training step the masked
weights are set back to zero. The masks live in a callback, not in the
model, so the fine-tuned model is already "stripped": a plain model whose
pruned weights are exact zeros (which is what makes it compress).

Example:

```python
pruned, report = prune_model(model, images, labels, 0.8, epochs=2, min_steps=1250)
print(report.total_sparsity, report.layers)
```
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from vispipe.export.options import PRUNE_DECAYS
from vispipe.models.batchnorm import recompute_statistics

__all__ = [
    "PolynomialDecay",
    "PruneReport",
    "prunable_weights",
    "magnitude_mask",
    "PruningCallback",
    "weight_sparsity",
    "prune_model",
]


@dataclasses.dataclass(frozen=True)
class PolynomialDecay:
    """tfmot's `PolynomialDecay` pruning schedule.

    Sparsity at step `s` is
    `final + (initial - final) * (1 - p) ** power` with
    `p = clip((s - begin_step) / (end_step - begin_step), 0, 1)`; masks are
    updated at `begin_step <= s <= end_step` when
    `(s - begin_step) % frequency == 0`.

    Example:

    ```python
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    schedule.sparsity(500)  # 0.7
    ```
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3.0
    frequency: int = 100

    def __post_init__(self) -> None:
        for name in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"PolynomialDecay.{name}: expected [0, 1), got {value!r}.")
        if self.begin_step < 0 or self.end_step <= self.begin_step:
            raise ValueError(
                f"PolynomialDecay: expected 0 <= begin_step < end_step, got "
                f"begin_step={self.begin_step}, end_step={self.end_step}."
            )
        if self.frequency <= 0:
            raise ValueError(f"PolynomialDecay.frequency: expected > 0, got {self.frequency}.")

    def should_prune(self, step: int) -> bool:
        """Whether the masks are updated at `step`."""
        return (self.begin_step <= step <= self.end_step
                and (step - self.begin_step) % self.frequency == 0)

    def sparsity(self, step: int) -> float:
        """The target sparsity at `step`."""
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, progress))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - progress) ** self.power


@dataclasses.dataclass
class PruneReport:
    """What pruning did.

    Attributes:
        target_sparsity: The schedule's final sparsity.
        schedule: The schedule, as a dict.
        layers: Per pruned kernel, `{"name", "weights", "zeros", "sparsity"}`.
        total_sparsity: Zeros / weights over all pruned kernels.
        steps: Fine-tuning steps run.
        history: Per epoch loss and accuracy of the fine-tune.
    """

    target_sparsity: float
    schedule: dict[str, Any]
    layers: list[dict[str, Any]]
    total_sparsity: float
    steps: int
    history: dict[str, list[float]]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_EAGER_STEPS = 8  # fine-tunes this short run eagerly
_STAT_BATCHES = 32  # training batches BatchNorm's statistics are recomputed on after pruning
# The layers tfmot prunes, with their kernels' attribute names in Keras 3
# (which calls a depthwise layer's kernel `kernel`; Keras 2 said `depthwise_kernel`).
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_SINGLE_KERNEL = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                  keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                  keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
                  keras.layers.DepthwiseConv2D, keras.layers.Dense)


def prunable_weights(model: keras.Model) -> list[tuple[str, Any]]:
    """`(name, variable)` of every Conv/Dense kernel, nested models included.

    A separable convolution contributes two kernels, named
    `<layer>/depthwise_kernel` and `<layer>/pointwise_kernel`.
    """
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _SEPARABLE):
            found += [(f"{layer.name}/{attr}", getattr(layer, attr))
                      for attr in ("depthwise_kernel", "pointwise_kernel")]
        elif isinstance(layer, _SINGLE_KERNEL):
            found.append((layer.name, layer.kernel))
    return found


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """tfmot's mask: keep the `round(size * (1 - sparsity))` largest |w|.

    Weights equal to the threshold are kept, as in tfmot (`>=`).

    Args:
        weights: A kernel.
        sparsity: The share of weights to zero, in [0, 1).

    Returns:
        A float32 mask of the kernel's shape (1 kept, 0 pruned).
    """
    magnitude = np.abs(weights).reshape(-1)
    keep = int(round(magnitude.size * (1.0 - sparsity)))
    if keep <= 0:
        return np.zeros(weights.shape, np.float32)
    threshold = np.partition(magnitude, magnitude.size - keep)[magnitude.size - keep]
    return (np.abs(weights) >= threshold).astype(np.float32)


class PruningCallback(keras.callbacks.Callback):
    """Updates the masks on schedule and keeps pruned weights at zero.

    Args:
        weights: `(name, variable)` pairs to prune.
        schedule: The `PolynomialDecay` schedule, in optimizer steps.
        total_steps: Training stops after this many steps (0: when `fit`
            ends), so a fine-tune can end inside an epoch.
    """

    def __init__(self, weights: list[tuple[str, Any]], schedule: PolynomialDecay,
                 total_steps: int = 0):
        super().__init__()
        self.targets = weights
        self.schedule = schedule
        self.total_steps = total_steps
        self.masks = [np.ones(tuple(v.shape), np.float32) for _, v in weights]
        self.step = 0

    def on_train_batch_begin(self, batch, logs=None) -> None:
        if self.schedule.should_prune(self.step):
            sparsity = self.schedule.sparsity(self.step)
            for i, (_, variable) in enumerate(self.targets):
                self.masks[i] = magnitude_mask(keras.ops.convert_to_numpy(variable), sparsity)
            self._apply()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.step += 1
        self._apply()
        if self.total_steps and self.step >= self.total_steps:
            self.model.stop_training = True

    def _apply(self) -> None:
        for mask, (_, variable) in zip(self.masks, self.targets):
            variable.assign(variable * mask)


def weight_sparsity(model: keras.Model) -> tuple[list[dict[str, Any]], float]:
    """Measured per-kernel sparsity and the total over all prunable kernels."""
    layers, zeros_total, size_total = [], 0, 0
    for name, variable in prunable_weights(model):
        values = keras.ops.convert_to_numpy(variable)
        zeros = int(np.count_nonzero(values == 0))
        layers.append({"name": name, "weights": int(values.size), "zeros": zeros,
                       "sparsity": zeros / values.size})
        zeros_total += zeros
        size_total += values.size
    return layers, zeros_total / max(size_total, 1)


def _recompute_statistics(model: keras.Model, images: np.ndarray, batch_size: int,
                          seed: int) -> None:
    """Sets BatchNorm's moving statistics to those of the pruned weights (`_STAT_BATCHES`).

    A final partial batch is left out when there is a full one (a batch of
    one image has zero variance).
    """
    images = np.asarray(images)
    order = np.random.default_rng(seed).permutation(len(images))[:_STAT_BATCHES * batch_size]
    if len(order) >= batch_size:
        order = order[:len(order) // batch_size * batch_size]
    batches = (np.asarray(images[order[i:i + batch_size]], np.float32)
               for i in range(0, len(order), batch_size))
    recompute_statistics(model, batches, _STAT_BATCHES)


def prune_model(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    target_sparsity: float,
    *,
    epochs: int = 1,
    min_steps: int = 0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    decay: str = "cosine",
    end_fraction: float = 0.6,
    power: float = 3.0,
    seed: int = 42,
    progress: bool = True,
) -> tuple[keras.Model, PruneReport]:
    """Prunes a copy of `model` to `target_sparsity` during a short fine-tune.

    Sparsity ramps from 0 to the target with `PolynomialDecay` over the first
    `end_fraction` of the fine-tuning steps (mask updates about ten times,
    the last one exactly at the target), and the rest of the fine-tune
    recovers accuracy at the target sparsity. A fine-tune of one or two
    steps prunes to the target at its first step. `model` is left unchanged.

    The fine-tune runs `max(epochs, min_steps)`: `epochs` passes over the
    images, or `min_steps` steps when those are fewer (the last epoch then
    ends early). The length in steps is what recovers accuracy at a high
    sparsity, and a small dataset's two epochs are few steps.

    The rate starts at 1e-3 and decays to 0 (cosine) over the whole
    fine-tune, as gradual-pruning papers fine-tune; a constant 1e-4, the
    former default, left most of the loss unrecovered. Top-1 drop from
    Keras (points, 2,000 CIFAR test images; seconds on 2 shared cores;
    bench/README.md):

    | fine-tune (1e-3 cosine) | MobileNetV2 5-class | ResNet-20 |
    |---|---:|---:|
    | 50%, 250 / 314 steps | 0.25 | -0.40 |
    | 80%, 250 / 314 steps | 20.15 | 7.15 |
    | 80%, 704 steps (2 epochs of 22,500 images) | 3.70 (321 s) | - |
    | 80%, 750 / 942 steps | 2.35 | -0.55 |
    | 80%, 1,250 steps | -0.75 (715 s) | - |
    | 80%, 1,408 steps (2 epochs of 45,000 images) | - | -3.80 (481 s) |

    (1e-4 constant at the same steps: MobileNetV2 50% 3.25, ResNet-20 80%
    6.0.) Hence `vispipe export`'s `prune_min_steps` of 1,250.

    BatchNorm's moving statistics are recomputed on training batches after
    the fine-tune (`recompute_statistics`, "precise BN"): the moving
    averages of a short fine-tune lag the weights it keeps zeroing.
    Measured (top-1 drop from Keras, points): CIFAR-5 MobileNetV2 at 50%
    (250 steps) 3.25 recomputed, 4.65 with BatchNorm frozen; CIFAR-10
    ResNet-20 at 80% (314 steps) 6.0 recomputed, 6.3 not, 31.6 frozen.

    Args:
        model: The trained Keras model.
        images: uint8 training images `[N, H, W, C]`.
        labels: int labels `[N]`.
        target_sparsity: Final share of zero weights per kernel, in (0, 1).
        epochs: Fine-tuning epochs.
        min_steps: Fine-tuning steps at least (0: `epochs` alone).
        batch_size: Fine-tuning batch size.
        learning_rate: Adam learning rate of the fine-tune (its start, when
            it decays).
        decay: "constant", or "cosine": the rate decays to 0 over the
            fine-tune (`keras.optimizers.schedules.CosineDecay`).
        end_fraction: Share of the steps over which sparsity ramps up.
        power: The schedule's exponent (tfmot's default 3).
        seed: Shuffling seed.
        progress: Show Keras's progress bar.

    Returns:
        `(pruned_model, report)`.

    Raises:
        ValueError: A sparsity outside (0, 1), `epochs` < 1, `min_steps`
            < 0, no images, or no prunable layer.

    Example:

    ```python
    pruned, report = prune_model(model, x_train, y_train, 0.5)
    ```
    """
    if decay not in PRUNE_DECAYS:
        raise ValueError(f"decay: expected one of {PRUNE_DECAYS}, got {decay!r}.")
    if not 0.0 < target_sparsity < 1.0:
        raise ValueError(f"target_sparsity: expected a value in (0, 1), got {target_sparsity!r}.")
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            f"prune_model: expected as many labels as images (>0), got {len(images)} images "
            f"and {len(labels)} labels.")
    if epochs < 1 or min_steps < 0:
        raise ValueError(f"prune_model: expected epochs >= 1 and min_steps >= 0, got "
                         f"epochs={epochs!r}, min_steps={min_steps!r}.")
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    weights = prunable_weights(pruned)
    if not weights:
        raise ValueError(f"Model {model.name!r} has no Conv or Dense kernel to prune.")
    per_epoch = math.ceil(len(images) / batch_size)
    steps = max(epochs * per_epoch, min_steps)
    # The last mask update must land on a step that runs (step `steps - 1`).
    ramp = min(steps - 1, int(steps * end_fraction))
    if ramp < 1:  # Too few steps to ramp: prune to the target at once (one-shot).
        schedule = PolynomialDecay(target_sparsity, target_sparsity, begin_step=0, end_step=1,
                                   power=power, frequency=1)
    else:
        frequency = max(1, min(100, ramp // 10))
        schedule = PolynomialDecay(0.0, target_sparsity, begin_step=0,
                                   end_step=frequency * max(1, ramp // frequency),
                                   power=power, frequency=frequency)
    callback = PruningCallback(weights, schedule, total_steps=steps)
    # Tracing a deep network's train step (MobileNetV2, EfficientNet) costs more
    # than running a few steps eagerly.
    rate = (keras.optimizers.schedules.CosineDecay(learning_rate, steps) if decay == "cosine"
            else learning_rate)
    pruned.compile(optimizer=keras.optimizers.Adam(rate),
                   loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                   run_eagerly=steps <= _EAGER_STEPS)
    keras.utils.set_random_seed(seed)
    history = pruned.fit(np.asarray(images, np.float32), np.asarray(labels),
                         epochs=math.ceil(steps / per_epoch),
                         batch_size=batch_size, shuffle=True, callbacks=[callback],
                         verbose=1 if progress else 0)
    _recompute_statistics(pruned, images, batch_size, seed)
    layers, total = weight_sparsity(pruned)
    report = PruneReport(
        target_sparsity=target_sparsity, schedule=dataclasses.asdict(schedule), layers=layers,
        total_sparsity=total, steps=callback.step,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
    )
    return pruned, report
