"""Likely mislabelled images: confident learning finds labels flipped on purpose.

Cost: the real test trains LeNet 3 times (3 folds) on 1,333 MNIST digits for
3 epochs (about 10 s on 2 idle cores); the others are numpy only.
"""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from insight_data import extracted, load_split
from vispipe.evaluate.label_issues import (
    confident_joint,
    find_label_issues,
    kfold_indices,
    out_of_fold_probabilities,
    per_class_thresholds,
    precision_recall_at,
)
from vispipe.models import build_model


def test_confident_learning_flags_images_confidently_of_another_class(tmp_path):
    probs = np.array([
        [0.9, 0.1],   # labelled 0, looks 0
        [0.8, 0.2],   # labelled 0, looks 0
        [0.1, 0.9],   # labelled 0, confidently 1: an issue
        [0.2, 0.8],   # labelled 1, looks 1
        [0.3, 0.7],   # labelled 1, looks 1
        [0.55, 0.45],  # labelled 1, unsure: below the class-0 threshold
    ])
    labels = np.array([0, 0, 0, 1, 1, 1])
    thresholds = per_class_thresholds(probs, labels)
    assert thresholds == pytest.approx([(0.9 + 0.8 + 0.1) / 3, (0.8 + 0.7 + 0.45) / 3])
    joint = confident_joint(probs, labels)
    assert joint.tolist() == [[2, 1], [0, 2]]
    issues = find_label_issues(probs, labels, ["cat", "dog"],
                               filenames=[f"img{i}.png" for i in range(6)])
    assert [i.filename for i in issues.issues] == ["img2.png"]
    assert issues.issues[0].given == "cat" and issues.issues[0].suggested == "dog"
    assert issues.estimated_errors == 1
    assert issues.ranking[:2].tolist() == [2, 5]  # Most doubtful first.
    path = issues.write_csv(str(tmp_path / "issues.csv"))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["filename"] == "img2.png" and rows[0]["suggested_label"] == "dog"
    assert rows[0]["new_label"] == ""


def test_folds_are_stratified_disjoint_and_complete():
    labels = np.array([0] * 9 + [1] * 6 + [2] * 2)
    parts = kfold_indices(labels, 3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for part in parts:
        assert (labels[part] == 0).sum() == 3 and (labels[part] == 1).sum() == 2
    with pytest.raises(ValueError, match="folds: expected an integer >= 2"):
        kfold_indices(labels, 1)


def test_out_of_fold_never_predicts_an_image_it_trained_on():
    labels = np.arange(12) % 2
    seen = []

    def fit_predict(train, held):
        assert not set(train) & set(held)
        seen.append(held)
        return np.tile([0.5, 0.5], (len(held), 1))

    probs = out_of_fold_probabilities(fit_predict, labels, num_classes=2, folds=3,
                                      progress=False)
    assert probs.shape == (12, 2) and not np.isnan(probs).any()
    assert sorted(np.concatenate(seen).tolist()) == list(range(12))


def test_flipped_mnist_labels_are_found():
    root = extracted("mnist-png.tar.gz", 200)
    images, labels, classes = load_split(root, "train")
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), size=len(labels) // 50, replace=False)  # 2%
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10

    def fit_predict(train, held):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((28, 28, 1))
        network = build_model("lenet", (28, 28, 1), 10)
        model = keras.Model(inputs, network(keras.layers.Rescaling(1 / 255.0)(inputs)))
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        model.fit(images[train], noisy[train], batch_size=32, epochs=3, verbose=0)
        return model.predict(images[held], batch_size=256, verbose=0)

    probs = out_of_fold_probabilities(fit_predict, noisy, num_classes=10, folds=3,
                                      progress=False)
    issues = find_label_issues(probs, noisy, classes)
    n = len(flipped)
    precision, recall = precision_recall_at(issues.ranking, flipped, n)
    _, recall_2n = precision_recall_at(issues.ranking, flipped, 2 * n)
    flagged = np.array([i.index for i in issues.issues])
    flagged_precision, flagged_recall = precision_recall_at(flagged, flipped, len(flagged))
    figures = dict(recall_at_n=recall, recall_at_2n=recall_2n, flagged=len(flagged),
                   flagged_precision=flagged_precision, flagged_recall=flagged_recall)
    # A ranking that ignored the labels would find 2% of them in the top N
    # (measured here: about 0.58 at N, 0.83 at 2N).
    assert recall >= 0.45 and recall_2n >= 0.7, figures
    assert flagged_recall >= 0.6 and flagged_precision >= 0.3, figures
