"""Leslie Smith's learning-rate range test ("LR finder").

A fresh model trains for at most `num_steps` steps while the learning rate
grows exponentially from `start_lr` to `end_lr`; the loss is smoothed with
fastai's debiased exponential moving average (beta 0.98) and the test stops
once the smoothed loss exceeds 4x its minimum (divergence). The model is
discarded: nothing but the plot and a JSON of the curve is written.

Suggestions, as fastai computes them (`fastai.callback.schedule`), on the
curve without its first 10% of steps and last 5 points (start-up noise and
the divergence):

- "valley" (the default): the middle of the longest descending stretch of
  the curve (fastai's default since 2.4). It needs a sustained descent, so
  a flat, noisy start does not fool it. In the frozen phase it is searched
  from where the loss has fallen by `DESCENT_FRACTION` of its whole fall: a
  head's smoothed loss creeps down ~1e-5 a step for decades before it falls,
  and fastai's stretch starts on the creep. CIFAR ResNet-20 head, SGD (mean
  val accuracy of 3 heads, tests/test_finetune.py): fastai 3e-4 (0.45),
  from the fall 1e-2 to 3e-2 (0.58-0.60, the sweep's best); Adam 3.6e-4
  (0.49) -> 2.6e-2 (0.62). Full networks keep fastai's rule: their curves
  rise first, and from the fall a ResNet-20 from scratch with Adam got 3e-2
  where fastai's 5e-3 was already worse than 1e-3.
- "minimum": a tenth of the rate at the lowest loss.
- "steep": the steepest point of the curve. On a curve that stays flat for
  decades its minimum slope is noise: ResNet-18 with SGD on 245 photos got
  3.5e-7 from it, where nothing learns.

All three are marked on the plot; `rule` picks the one returned. On real
data (tests/test_finetune.py) the head trained at the valley rate comes
within a few points of the best of a sweep of rates.

The test runs in the phase the run starts in: with pretrained `weights` and
a frozen phase, only the head trains (on cached backbone features, as the
trainer does); `phase="unfrozen"` first trains the head for the frozen
epochs, then tests the unfrozen network, suggesting the fine-tuning rate.

Example:

```python
result = find_lr("datasets/mnist", ModelConfig(name="lenet"), TrainConfig())
print(result.suggested_lr, result.suggestions, result.plot_path)
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

from vispipe.configs import LR_FIND_PHASES, LR_FIND_RULES, ModelConfig, TrainConfig
from vispipe.data.format import read_dataset_info
from vispipe.data.inputs import make_dataset
from vispipe.fileio import write_json_atomic
from vispipe.models import build_classifier, set_backbone_trainable
from vispipe.models.transfer import frozen_epochs
from vispipe.train.device import configure_device, seed_everything
from vispipe.train.feature_cache import compute_features, split_head
from vispipe.train.layer_rates import depth_multipliers, with_rate_multipliers
from vispipe.train.optimizers import make_optimizer
from vispipe.train.plots import plot_lr_range_test

__all__ = [
    "SMOOTHING_BETA",
    "DIVERGENCE_FACTOR",
    "DESCENT_FRACTION",
    "RULES",
    "PHASES",
    "LRFinderResult",
    "suggest_lrs",
    "find_lr",
]

SMOOTHING_BETA = 0.98
DIVERGENCE_FACTOR = 4.0
# In the frozen phase the valley's stretch starts once the smoothed loss has
# fallen by this share of its whole fall: a plateau's creep is no descent.
DESCENT_FRACTION = 0.1
RULES = LR_FIND_RULES
PHASES = LR_FIND_PHASES


@dataclass
class LRFinderResult:
    """Outcome of a range test.

    Attributes:
        lrs: Learning rate of each recorded step.
        losses: Smoothed loss after each step.
        suggested_lr: The suggestion of `rule`.
        suggestions: Every rule's suggestion (see `RULES`).
        rule: The rule that chose `suggested_lr`.
        phase: "frozen" (head only) or "unfrozen".
        plot_path: The PNG of loss against learning rate, candidates marked.
    """

    lrs: list[float]
    losses: list[float]
    suggested_lr: float
    suggestions: dict[str, float]
    rule: str
    phase: str
    plot_path: str


def _valley(losses: np.ndarray) -> int:
    """Index in the middle of the longest decreasing subsequence's span."""
    n = len(losses)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    sections = (end - start) / 3
    return max(0, start + int(sections) + int(sections / 2))


def _descent_start(losses: np.ndarray) -> int:
    """Index where the loss has first fallen by `DESCENT_FRACTION` of its whole fall (0 if none)."""
    fall = losses[0] - losses.min()
    return int(np.argmax(losses < losses[0] - DESCENT_FRACTION * fall))


def suggest_lrs(lrs: list[float], losses: list[float], num_steps: int | None = None, *,
                from_descent: bool = False) -> dict[str, tuple[float, float]]:
    """Every rule's suggestion, with the curve point to mark for it.

    Args:
        lrs: Increasing learning rates.
        losses: Smoothed losses at those rates.
        num_steps: Planned steps of the test (its first tenth is skipped);
            default `len(lrs)`.
        from_descent: Search the valley only from where the loss has fallen
            by `DESCENT_FRACTION` of its whole fall (`find_lr` does in the
            frozen phase).

    Returns:
        Rule -> `(suggested lr, (lr, loss) of the curve point it comes
        from)`; "minimum" suggests a tenth of its point's rate.

    Raises:
        ValueError: Fewer than 3 points.

    Example:

    ```python
    lr, (point_lr, point_loss) = suggest_lrs(list(np.logspace(-5, 0, 50)), losses)["valley"]
    ```
    """
    if len(lrs) < 3:
        raise ValueError(
            f"The range test recorded {len(lrs)} step(s); at least 3 are needed for a "
            "suggestion (raise num_steps or start_lr lower)."
        )
    lo, hi = (num_steps or len(lrs)) // 10, len(lrs) - 5
    if hi - lo < 3:
        lo, hi = 0, len(lrs)
    x, y = np.asarray(lrs[lo:hi], dtype="float64"), np.asarray(losses[lo:hi], dtype="float64")
    start = _descent_start(y) if from_descent else 0
    valley = start + _valley(y[start:])
    lowest = int(np.argmin(y))
    steep = int(np.argmin((y[1:] - y[:-1]) / (np.log(x[1:]) - np.log(x[:-1]))))
    def point(i: int) -> tuple[float, float]:
        return float(x[i]), float(y[i])

    return {"valley": (float(x[valley]), point(valley)),
            "minimum": (float(x[lowest]) / 10, point(lowest)),
            "steep": (float(x[steep]), point(steep))}


def _phase(model_cfg: ModelConfig, phase: str) -> str:
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}.")
    if phase != "auto":
        return phase
    # The phase a run with these settings starts in.
    return "frozen" if frozen_epochs(model_cfg.freeze_epochs, model_cfg.weights) else "unfrozen"


def _loss(train_cfg: TrainConfig) -> keras.losses.Loss:
    if train_cfg.label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=train_cfg.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def find_lr(
    dataset_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    rule: str = "valley",
    phase: str = "auto",
    out_dir: str | None = None,
    progress: bool = True,
) -> LRFinderResult:
    """Runs the LR range test on the training split.

    Uses the run's network and weights, optimizer (with its momentum and
    weight decay), batch size, augmentation, normalization, label smoothing
    and, unfrozen, `unfreeze_blocks` and `finetune_lr_mult` (the rate tested
    is the head's).

    Args:
        dataset_dir: The dataset folder.
        model_cfg: The network.
        train_cfg: The solver (its LR policy is not used, except the base
            rate for the head's training before an unfrozen test).
        start_lr: First learning rate.
        end_lr: Last learning rate (reached at step `num_steps - 1`).
        num_steps: Steps at most (the data repeats as needed).
        rule: The suggestion returned, one of `RULES`.
        phase: "frozen" (train the head only), "unfrozen" (after the head's
            frozen epochs, the network as fine-tuning trains it) or "auto"
            (the phase the run starts in).
        out_dir: Folder for `lr_find.png` and `lr_find.json`; default: a
            new temporary folder.
        progress: Show a progress bar.

    Returns:
        An `LRFinderResult`.

    Raises:
        ValueError: `0 < start_lr < end_lr` does not hold, `num_steps < 3`,
            an unknown rule or phase, or the loss diverged before 3 steps.

    Example:

    ```python
    result = find_lr("datasets/photos", ModelConfig(name="mobilenet_v2", weights="imagenet"),
                     TrainConfig(optimizer="sgd", batch_size=32), out_dir="lr")
    ```
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(
            f"start_lr and end_lr: expected 0 < start_lr < end_lr, got start_lr={start_lr!r}, "
            f"end_lr={end_lr!r}."
        )
    if num_steps < 3:
        raise ValueError(f"num_steps: expected an integer >= 3, got {num_steps!r}.")
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}.")
    phase = _phase(model_cfg, phase)
    info = read_dataset_info(dataset_dir)
    seed_everything(train_cfg.seed)
    configure_device(train_cfg.mixed_precision)
    model = build_classifier(model_cfg, info, train_cfg.normalization)
    depth = info.num_classes if train_cfg.label_smoothing else 0
    cached = None
    split = split_head(model) if model_cfg.feature_cache_copies else None
    head_epochs = frozen_epochs(model_cfg.freeze_epochs, model_cfg.weights)
    if phase == "frozen" or head_epochs:
        set_backbone_trainable(model, False)
        if split is not None:
            # The trainer's frozen phase trains on un-augmented features too.
            cached = compute_features(split.backbone, make_dataset(
                info, "train", train_cfg.batch_size, cache=train_cfg.cache), progress=progress)
    if phase == "unfrozen" and head_epochs:
        _train_head(model, split, cached, info, train_cfg, head_epochs, depth)
    if phase == "unfrozen":
        set_backbone_trainable(model, True, last_blocks=model_cfg.unfreeze_blocks)

    schedule = keras.optimizers.schedules.ExponentialDecay(
        start_lr, decay_steps=num_steps - 1, decay_rate=end_lr / start_lr
    )
    optimizer = make_optimizer(train_cfg, schedule)
    if phase == "unfrozen" and model_cfg.finetune_lr_mult != 1:
        optimizer = with_rate_multipliers(optimizer,
                                          depth_multipliers(model, model_cfg.finetune_lr_mult))
    trainee = split.head if phase == "frozen" and cached is not None else model
    trainee.compile(optimizer=optimizer, loss=_loss(train_cfg))
    if trainee is model:
        ds = make_dataset(info, "train", train_cfg.batch_size, training=True,
                          augment=train_cfg.augment, seed=train_cfg.seed,
                          cache=train_cfg.cache, repeat=True)
        if depth:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, depth)))
    else:
        ds = cached.dataset(train_cfg.batch_size, seed=train_cfg.seed, shuffle=True,
                            num_classes=depth).repeat()
    lrs, losses = _range_test(trainee, ds, schedule, num_steps, progress)
    suggestions = suggest_lrs(lrs, losses, num_steps, from_descent=phase == "frozen")

    out_dir = out_dir or tempfile.mkdtemp(prefix="vispipe-lr-find-")
    os.makedirs(out_dir, exist_ok=True)
    plot_path = plot_lr_range_test(lrs, losses, suggestions, rule,
                                   os.path.join(out_dir, "lr_find.png"),
                                   title=f"Learning-rate range test ({phase})")
    chosen = {name: lr for name, (lr, _) in suggestions.items()}
    write_json_atomic(os.path.join(out_dir, "lr_find.json"), {
        "lrs": lrs, "losses": losses, "suggested_lr": chosen[rule], "rule": rule,
        "suggestions": chosen, "phase": phase, "start_lr": start_lr, "end_lr": end_lr,
        "num_steps": num_steps,
    })
    return LRFinderResult(lrs=lrs, losses=losses, suggested_lr=chosen[rule],
                          suggestions=chosen, rule=rule, phase=phase, plot_path=plot_path)


def _train_head(model, split, cached, info, train_cfg: TrainConfig, epochs: int,
                depth: int) -> None:
    """The frozen phase before an unfrozen test, at the base rate."""
    trainee = split.head if cached is not None else model
    trainee.compile(optimizer=make_optimizer(train_cfg, train_cfg.lr.base_lr),
                    loss=_loss(train_cfg))
    if cached is not None:
        ds = cached.dataset(train_cfg.batch_size, seed=train_cfg.seed, shuffle=True,
                            num_classes=depth)
    else:
        ds = make_dataset(info, "train", train_cfg.batch_size, training=True,
                          augment=train_cfg.augment, seed=train_cfg.seed, cache=train_cfg.cache)
        if depth:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, depth)))
    trainee.fit(ds, epochs=epochs, verbose=0, shuffle=False)  # The pipeline shuffles.


def _range_test(trainee: keras.Model, ds: tf.data.Dataset, schedule, num_steps: int,
                progress: bool) -> tuple[list[float], list[float]]:
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    batches = ds.take(num_steps).as_numpy_iterator()
    for step, (x, y) in enumerate(tqdm(batches, total=num_steps, unit="step",
                                       desc="LR range test", disable=not progress)):
        lr = float(schedule(step))
        value = float(trainee.train_on_batch(x, y, return_dict=True)["loss"])
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

