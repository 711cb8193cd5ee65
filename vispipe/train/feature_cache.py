"""Training a head on cached backbone features (the frozen phase, fast on a CPU).

While the backbone is frozen its output for an image never changes, yet a
plain `fit` runs the whole backbone for every image at every step. Here the
model is split at its head: the backbone turns every training image into
features once (un-augmented, plus a fixed number of augmented views), and
the head trains on those arrays. The head model shares its layers with the
full model, so the full model's head learns too, and both compile with the
same optimizer, so the step count (and the LR schedule) carries on.

The backbone runs in inference mode for the cache (BatchNorm statistics,
no dropout), exactly as it does frozen in the full model.

Example:

```python
split = split_head(model)
train = compute_features(split.backbone, make_dataset(info, "train", 64))
split.head.compile(optimizer=model.optimizer, loss=...)
split.head.fit(train.dataset(64, seed=0, shuffle=True), epochs=5)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

__all__ = ["HeadSplit", "CachedFeatures", "split_head", "compute_features"]

# The head as vispipe's zoo networks build it (vispipe.models.layers.classifier_head).
_HEAD = ("head_dropout", "classifier", "predictions")


@dataclass
class HeadSplit:
    """A classifier cut where its head begins.

    Attributes:
        backbone: Images -> the features the head takes.
        head: Features -> probabilities; its layers are the full model's.
    """

    backbone: keras.Model
    head: keras.Model


@dataclass
class CachedFeatures:
    """Backbone features of a split, with their labels.

    Attributes:
        features: (images, feature size) float32.
        labels: (images,) int32 class indices.
    """

    features: np.ndarray
    labels: np.ndarray

    def dataset(self, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                num_classes: int = 0) -> tf.data.Dataset:
        """Batches of `(features, labels)`; one-hot labels when `num_classes`.

        Args:
            batch_size: Features per batch (the last batch may be smaller).
            seed: Seed of the shuffle.
            shuffle: Shuffle all features (training).
            num_classes: One-hot targets of this depth (label smoothing);
                0 keeps class indices.
        """
        ds = tf.data.Dataset.from_tensor_slices((self.features, self.labels))
        if shuffle:
            ds = ds.shuffle(len(self.labels), seed=seed, reshuffle_each_iteration=False)
        ds = ds.batch(batch_size)
        if num_classes:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
        return ds.prefetch(tf.data.AUTOTUNE)


def split_head(model: keras.Model) -> HeadSplit | None:
    """Splits a zoo classifier into backbone and head, or None when it has no such head.

    Args:
        model: A functional model whose last layers are vispipe's head
            ([`head_dropout` ->] `classifier` -> `predictions`); custom
            networks (nested models) are not split.

    Returns:
        A `HeadSplit`, or None.
    """
    names = [layer.name for layer in model.layers]
    present = [name for name in _HEAD if name in names]
    if present[-2:] != ["classifier", "predictions"] or names[-len(present):] != present:
        return None
    first = names.index(present[0])
    features = model.layers[first - 1].output
    backbone = keras.Model(model.input, features, name=f"{model.name}_backbone")
    inputs = keras.Input(tuple(features.shape[1:]), name="features")
    x = inputs
    for name in present:
        x = model.get_layer(name)(x)
    return HeadSplit(backbone=backbone, head=keras.Model(inputs, x, name=f"{model.name}_head"))


def compute_features(backbone: keras.Model, batches: Iterable, *, total: int | None = None,
                     progress: bool = False, desc: str = "Caching features") -> CachedFeatures:
    """Runs the backbone in inference mode over `(images, labels)` batches.

    Args:
        backbone: Images -> features.
        batches: An iterable of `(images, labels)` batches (class indices).
        total: Batches expected, for the progress bar.
        progress: Show a progress bar.
        desc: Its label.

    Returns:
        The features and labels, in batch order.
    """
    @tf.function(reduce_retracing=True)
    def forward(images):
        return backbone(images, training=False)

    features, labels = [], []
    for images, batch_labels in tqdm(batches, total=total, unit="batch", desc=desc,
                                     disable=not progress, leave=False):
        features.append(keras.ops.convert_to_numpy(forward(images)).astype("float32"))
        labels.append(np.asarray(batch_labels, dtype="int32"))
    if not features:
        raise ValueError("compute_features: no batches to compute features of.")
    return CachedFeatures(np.concatenate(features), np.concatenate(labels))
