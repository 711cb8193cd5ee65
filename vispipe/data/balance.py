"""Class imbalance: how skewed a split is, class weights, and a balanced sampler.

Three remedies a user can pick from, all computed from the split's own
class counts:

- `imbalance_ratio`: largest / smallest class count, the one number a
  dataset report shows (1.0 is balanced).
- `class_weights`: per-class loss weights; `"auto"` is scikit-learn's
  "balanced" rule, `n_images / (n_classes * n_c)`, so every class carries
  the same total weight and the mean weight per image stays 1 (the learning
  rate keeps its meaning). `with_sample_weights` attaches them to a
  `tf.data` pipeline as Keras's third element, which works under every
  distribution strategy (Keras's own `fit(class_weight=...)` does not take
  a distributed dataset).
- `balanced_records`: resamples decoded records so that every class is drawn
  equally often (minority images repeat, majority images are skipped), for
  the same number of records per epoch.

Example:

```python
counts = class_counts_of(info, "train")
weights = class_weights("auto", counts)            # {0: 0.55, 1: 5.2, ...}
ds = with_sample_weights(make_dataset(info, "train", 64, training=True), weights)
model.fit(ds)
```
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "CLASS_WEIGHT_MODES",
    "IMBALANCE_WARNING",
    "imbalance_ratios",
    "parse_class_weight",
    "class_counts_of",
    "imbalance_ratio",
    "class_weights",
    "with_sample_weights",
    "balanced_records",
    "training_class_weights",
    "training_records",
    "weighted_batches",
]

CLASS_WEIGHT_MODES = ("none", "auto")
IMBALANCE_WARNING = 3.0  # A ratio from here on is reported as imbalanced.


def class_counts_of(info, split: str) -> list[int]:
    """Images per class of `split`, indexed by label id.

    Args:
        info: A `vispipe.data.format.DatasetInfo`.
        split: `"train"`, `"val"` or `"test"`.

    Returns:
        One count per class (0 for a class absent from the split).

    Raises:
        ValueError: `dataset.json` has no class counts for `split`.
    """
    per_split = info.class_counts.get(split)
    if per_split is None:
        raise ValueError(
            f"Dataset {info.path!r} records no class counts for split {split!r}; "
            f"it has {sorted(info.class_counts)}."
        )
    return [int(per_split.get(name, 0)) for name in info.classes]


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Largest class count divided by the smallest.

    Args:
        counts: Images per class.

    Returns:
        `max / min` (1.0 when balanced); `inf` when a class has no image.

    Example:

    ```python
    imbalance_ratio([600, 30, 600])  # 20.0
    ```
    """
    if not counts:
        raise ValueError("counts: expected at least one class, got none.")
    smallest, largest = min(counts), max(counts)
    if smallest <= 0:
        return math.inf
    return largest / smallest


def imbalance_ratios(info) -> dict[str, float | None]:
    """`imbalance_ratio` of every split of a dataset; None where a class has no image.

    Example:

    ```python
    imbalance_ratios(read_dataset_info("datasets/mnist-cut"))  # {"train": 20.8, "val": 20.0}
    ```
    """
    ratios: dict[str, float | None] = {}
    for split in info.splits:
        if split in info.class_counts:
            ratio = imbalance_ratio(class_counts_of(info, split))
            ratios[split] = round(ratio, 3) if math.isfinite(ratio) else None
    return ratios


def parse_class_weight(text: str) -> str | dict[str, float]:
    """`--class-weight` text: "auto", "none", or `NAME:W,NAME:W` (a mapping).

    Example:

    ```python
    parse_class_weight("cat:3,dog:0.5")  # {"cat": 3.0, "dog": 0.5}
    ```
    """
    import argparse

    if text in CLASS_WEIGHT_MODES:
        return text
    weights = {}
    for item in text.split(","):
        name, sep, value = item.rpartition(":")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"expected auto, none or CLASS:WEIGHT,CLASS:WEIGHT, got {text!r}")
    return weights


def class_weights(
    spec: str | Mapping[str | int, float] | None,
    counts: Sequence[int],
    classes: Sequence[str] | None = None,
) -> dict[int, float] | None:
    """Per-class loss weights from `train.class_weight`.

    Args:
        spec: `"none"` (or None, or an empty mapping): no weights. `"auto"`:
            `n / (C * n_c)` for the classes that have images. A mapping of
            class name (or label id) to weight: those classes get their
            weight, the others 1.0.
        counts: Images per class of the training split.
        classes: Class names, needed when `spec` names classes.

    Returns:
        `{label id: weight}`, or None for no weighting.

    Raises:
        ValueError: An unknown mode, an unknown class name, or a weight that
            is not a finite number > 0.

    Example:

    ```python
    class_weights("auto", [900, 100])           # {0: 0.556, 1: 5.0}
    class_weights({"cat": 3}, [50, 50], ["cat", "dog"])  # {0: 3.0, 1: 1.0}
    ```
    """
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return None
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec != "auto":
            raise ValueError(
                f"train.class_weight: expected one of {CLASS_WEIGHT_MODES} or a mapping "
                f"of class to weight, got {spec!r}."
            )
        total, present = sum(counts), sum(1 for c in counts if c > 0)
        return {i: (total / (present * c) if c > 0 else 1.0) for i, c in enumerate(counts)}
    if not isinstance(spec, Mapping):
        raise ValueError(
            "train.class_weight: expected 'auto', 'none' or a mapping of class to weight, "
            f"got {spec!r}."
        )
    weights = {i: 1.0 for i in range(len(counts))}
    names = list(classes or [])
    for key, value in spec.items():
        index = _class_index(key, names, len(counts))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0
        ):
            raise ValueError(
                f"train.class_weight.{key}: expected a number > 0, got {value!r}."
            )
        weights[index] = float(value)
    return weights


def _class_index(key: str | int, names: list[str], num_classes: int) -> int:
    if str(key) in names:
        return names.index(str(key))
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < num_classes:
        return key
    raise ValueError(
        f"train.class_weight: unknown class {key!r}; the classes are {names or list(range(num_classes))}."
    )


def with_sample_weights(ds, weights: Mapping[int, float]):
    """Adds each image's class weight to a batched `(images, labels)` pipeline.

    Args:
        ds: A `tf.data.Dataset` of `(images, labels)`; labels are class ids
            `[B]` or one-hot `[B, C]` (label smoothing).
        weights: `{label id: weight}` covering every class.

    Returns:
        A dataset of `(images, labels, sample_weights)` (float32 `[B]`).
    """
    import tensorflow as tf

    table = tf.constant([weights[i] for i in range(len(weights))], tf.float32)

    def attach(images, labels):
        ids = labels if labels.shape.rank == 1 else tf.argmax(labels, axis=-1)
        return images, labels, tf.gather(table, tf.cast(ids, tf.int32))

    return ds.map(attach, num_parallel_calls=tf.data.AUTOTUNE)


def balanced_records(records, counts: Sequence[int], *, seed: int, length: int | None = None):
    """Resamples decoded `(image, label, ...)` records to equal class frequencies.

    Each class becomes its own endlessly repeated, reshuffled stream; the
    result draws from them uniformly (seeded, rerandomized every pass) and
    stops after `length` records, by default the split's size, so an epoch
    keeps its length. Classes without images are left out.

    Args:
        records: Unbatched records whose second element is the label id
            (e.g. `vispipe.data.inputs.decoded_records`).
        counts: Images per class in `records`.
        seed: Seed of the draws and per-class shuffles.
        length: Records per pass (default: `sum(counts)`).

    Returns:
        A `tf.data.Dataset` with the same element structure and a known
        cardinality.

    Example:

    ```python
    records = decoded_records(info, "train", training=True)
    ds = make_dataset(info, "train", 64, training=True,
                      records=balanced_records(records, counts, seed=1))
    ```
    """
    import tensorflow as tf

    present = [c for c, n in enumerate(counts) if n > 0]
    if not present:
        raise ValueError("counts: expected at least one class with images, got none.")
    length = int(length if length is not None else sum(counts))
    streams = []
    for c in present:
        stream = records.filter(lambda _image, label, *rest, c=c: tf.equal(label, c))
        # A buffer as large as the class: every repeat is a new permutation.
        stream = stream.shuffle(int(counts[c]), seed=seed + c, reshuffle_each_iteration=True)
        streams.append(stream.repeat())
    weights = np.full(len(present), 1.0 / len(present), np.float32)
    mixed = tf.data.Dataset.sample_from_datasets(
        streams, weights=weights.tolist(), seed=seed, rerandomize_each_iteration=True
    )
    return mixed.take(length).apply(tf.data.experimental.assert_cardinality(length))


def training_class_weights(info, train_cfg) -> dict[int, float] | None:
    """`train.class_weight` over a dataset's training split; checks it up front.

    Args:
        info: The `DatasetInfo`.
        train_cfg: The `TrainConfig` (`class_weight`).

    Returns:
        `{label id: weight}`, or None for no weighting.

    Raises:
        ValueError: A bad mode, unknown class or weight (named).
    """
    return class_weights(train_cfg.class_weight, class_counts_of(info, "train"), info.classes)


def training_records(records, info, train_cfg, *, seed: int, num_shards: int = 1,
                     shard_index: int = 0):
    """The decoded training records as `train.sampler` draws them.

    Args:
        records: This rank's decoded training records (`decoded_records`).
        info: The `DatasetInfo` (its training class counts).
        train_cfg: The `TrainConfig` (`sampler`).
        seed: Seed of this epoch's draws.
        num_shards, shard_index: This rank's share of the split.

    Returns:
        `records` itself ("none"), or `balanced_records` over them
        ("balanced"), as many per epoch as the rank reads otherwise.
    """
    if train_cfg.sampler == "none":
        return records
    from vispipe.data.inputs import records_per_rank

    counts = [math.ceil(c / num_shards) for c in class_counts_of(info, "train")]
    return balanced_records(records, counts, seed=seed + shard_index,
                            length=records_per_rank(info, "train", num_shards))


def weighted_batches(ds, info, train_cfg):
    """Batches of `(images, labels)` with `train.class_weight` as sample weights.

    Returns:
        `ds` itself when `class_weight` is "none", else `(images, labels,
        weights)` batches (`with_sample_weights`).
    """
    weights = training_class_weights(info, train_cfg)
    return ds if weights is None else with_sample_weights(ds, weights)
