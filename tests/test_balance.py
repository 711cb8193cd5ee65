"""Class imbalance: the ratio, class weights and the balanced sampler.

Cost: well under a second each (tf.data on a few hundred tiny records).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from vispipe.data.balance import (
    balanced_records,
    class_weights,
    imbalance_ratio,
    with_sample_weights,
)


def test_imbalance_ratio_is_largest_over_smallest():
    assert imbalance_ratio([600, 30, 600]) == 20.0
    assert imbalance_ratio([5, 5]) == 1.0
    assert imbalance_ratio([5, 0]) == math.inf
    with pytest.raises(ValueError, match="at least one class"):
        imbalance_ratio([])


def test_auto_weights_give_every_class_the_same_total_weight():
    counts = [900, 100, 0]
    weights = class_weights("auto", counts)
    assert weights[0] == pytest.approx(1000 / (2 * 900))
    assert weights[1] == pytest.approx(1000 / (2 * 100))
    assert weights[2] == 1.0  # No images: no weight to balance.
    assert counts[0] * weights[0] == pytest.approx(counts[1] * weights[1])
    # The mean weight per image stays 1, so the learning rate keeps its meaning.
    assert sum(c * weights[i] for i, c in enumerate(counts)) / sum(counts) == pytest.approx(1.0)


def test_weights_by_name_none_and_bad_values():
    assert class_weights("none", [1, 2]) is None
    assert class_weights(None, [1, 2]) is None
    assert class_weights({}, [1, 2]) is None
    assert class_weights({"dog": 3}, [5, 5], ["cat", "dog"]) == {0: 1.0, 1: 3.0}
    assert class_weights({0: 2.5}, [5, 5], ["cat", "dog"]) == {0: 2.5, 1: 1.0}
    with pytest.raises(ValueError, match="unknown class 'cow'.*'cat', 'dog'"):
        class_weights({"cow": 2}, [5, 5], ["cat", "dog"])
    with pytest.raises(ValueError, match=r"class_weight.dog: expected a number > 0, got -1"):
        class_weights({"dog": -1}, [5, 5], ["cat", "dog"])
    with pytest.raises(ValueError, match="expected one of \\('none', 'auto'\\)"):
        class_weights("balanced", [5, 5])


def test_sample_weights_follow_sparse_and_one_hot_labels():
    weights = {0: 0.5, 1: 4.0}
    images = tf.zeros((4, 2, 2, 1))
    sparse = tf.data.Dataset.from_tensors((images, tf.constant([0, 1, 1, 0])))
    (_, _, w), = with_sample_weights(sparse, weights).as_numpy_iterator()
    assert w.tolist() == [0.5, 4.0, 4.0, 0.5]
    one_hot = tf.data.Dataset.from_tensors((images, tf.one_hot([1, 0, 0, 0], 2)))
    (_, _, w), = with_sample_weights(one_hot, weights).as_numpy_iterator()
    assert w.tolist() == [4.0, 0.5, 0.5, 0.5]


def test_balanced_records_draw_every_class_equally_often():
    counts = [300, 30, 6]
    labels = np.repeat(np.arange(3), counts).astype(np.int32)
    images = np.arange(len(labels), dtype=np.int32)  # Each record's identity.
    records = tf.data.Dataset.from_tensor_slices((images, labels))
    balanced = balanced_records(records, counts, seed=1)
    assert balanced.cardinality().numpy() == sum(counts)
    drawn = list(balanced.as_numpy_iterator())
    assert len(drawn) == sum(counts)
    shares = Counter(int(label) for _, label in drawn)
    for c in range(3):
        assert shares[c] / len(drawn) == pytest.approx(1 / 3, abs=0.06)
    # The minority class repeats all of its images rather than a few of them.
    assert len({int(i) for i, label in drawn if label == 2}) == 6
    # A new pass draws again (another order), with the same seed next time.
    second = [int(i) for i, _ in balanced.as_numpy_iterator()]
    assert second != [int(i) for i, _ in drawn]
    again = [int(i) for i, _ in balanced_records(records, counts, seed=1).as_numpy_iterator()]
    assert again == [int(i) for i, _ in drawn]
