"""Likely mislabelled images: confident learning on out-of-fold probabilities.

A model cannot judge the labels it was trained on (it has memorised them),
so every image gets probabilities from a model that never saw it:
`out_of_fold_probabilities` trains one model per fold of a k-fold split of
the training images and predicts the held-out fold.

Confident learning (Northcutt, Jiang and Chuang 2021; the method behind
cleanlab) then estimates which labels are wrong without any clean data:

1. per class `j`, the threshold `t_j` is the mean probability of `j` over
   the images labelled `j` (the model's own confidence on that class);
2. an image is *confidently* of class `j` when `p_j >= t_j` (the largest such
   `p_j` when several classes pass);
3. an image confidently of another class than its label is a label issue.

Issues are ranked by the normalized margin `p_label - max_{j != label} p_j`
(most negative first: the model is sure of another class and not of the
given one); `rank_label_issues` orders every image that way, so a user can
also review the top N regardless of the filter.

Example:

```python
probs = out_of_fold_probabilities(fit_predict, labels, folds=3)
issues = find_label_issues(probs, labels, classes)
issues.write_csv("label_issues.csv")
```
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from vispipe.evaluate.metrics import check_probabilities

__all__ = [
    "FitPredict",
    "LabelIssue",
    "LabelIssues",
    "per_class_thresholds",
    "confident_joint",
    "label_quality",
    "rank_label_issues",
    "find_label_issues",
    "kfold_indices",
    "out_of_fold_probabilities",
    "precision_recall_at",
]

# `fit_predict(train_index, heldout_index) -> probabilities [len(heldout), C]`.
FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`t_j`: mean probability of class `j` over the images labelled `j`.

    A class without images gets threshold 1 (nothing is confidently of it
    unless the model is certain).

    Returns:
        float64 `[C]`.
    """
    check_probabilities(probs, labels)
    num_classes = probs.shape[1]
    thresholds = np.ones(num_classes, np.float64)
    for j in range(num_classes):
        mask = labels == j
        if mask.any():
            thresholds[j] = float(probs[mask, j].mean())
    return thresholds


def _confident_class(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per image, the most probable class among those above their threshold, or -1."""
    above = probs >= thresholds[None, :] - 1e-12
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def confident_joint(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts of (given label, confident class): `C[i, j]`.

    Off-diagonal counts estimate how many images of true class `j` carry
    label `i`. Images confidently of no class are not counted.

    Returns:
        int64 `[C, C]`, rows the given labels.

    Example:

    ```python
    cj = confident_joint(probs, labels)
    print("estimated label errors:", cj.sum() - np.trace(cj))
    ```
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    confident = _confident_class(probs, per_class_thresholds(probs, labels))
    num_classes = probs.shape[1]
    joint = np.zeros((num_classes, num_classes), np.int64)
    counted = confident >= 0
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    return joint


def label_quality(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Normalized margin `p_label - max_{j != label} p_j`, in [-1, 1]; low is suspicious."""
    check_probabilities(probs, labels)
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    rows = np.arange(len(labels))
    given = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -np.inf
    return given - others.max(axis=1)


def rank_label_issues(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every image's index, most doubtful label first (by `label_quality`)."""
    quality = label_quality(probs, labels)
    return np.lexsort((np.arange(len(quality)), quality))


@dataclass
class LabelIssue:
    """One image whose given label the model doubts.

    Attributes:
        index: Position in the evaluated images.
        filename: Its file (or the index as text).
        given: The label it carries.
        suggested: The class the model is confident of.
        given_probability: Out-of-fold probability of the given label.
        suggested_probability: Probability of the suggested class.
        quality: The normalized margin (negative: the model prefers another class).
    """

    index: int
    filename: str
    given: str
    suggested: str
    given_probability: float
    suggested_probability: float
    quality: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LabelIssues:
    """The outcome of `find_label_issues`.

    Attributes:
        issues: Flagged images, most doubtful first.
        num_images: Images examined.
        classes: Class names.
        confident_joint: `[C, C]` counts (rows: given labels).
        thresholds: Per-class thresholds `t_j`.
        ranking: Every image's index, most doubtful first.
    """

    issues: list[LabelIssue]
    num_images: int
    classes: list[str]
    confident_joint: np.ndarray
    thresholds: np.ndarray
    ranking: np.ndarray
    files: dict[str, str] = field(default_factory=dict)

    @property
    def estimated_errors(self) -> int:
        """Off-diagonal mass of the confident joint."""
        return int(self.confident_joint.sum() - np.trace(self.confident_joint))

    def to_json(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "num_issues": len(self.issues),
            "estimated_errors": self.estimated_errors,
            "classes": list(self.classes),
            "thresholds": [float(t) for t in self.thresholds],
            "confident_joint": self.confident_joint.tolist(),
            "issues": [issue.to_json() for issue in self.issues],
            "files": dict(self.files),
        }

    def write_csv(self, path: str) -> str:
        """Writes the issues as a CSV to fix labels from (`new_label` left blank).

        Columns: rank, filename, given_label, suggested_label,
        given_probability, suggested_probability, quality, new_label.
        """
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.partial"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["rank", "filename", "given_label", "suggested_label",
                             "given_probability", "suggested_probability", "quality",
                             "new_label"])
            for rank, issue in enumerate(self.issues, 1):
                writer.writerow([rank, issue.filename, issue.given, issue.suggested,
                                 f"{issue.given_probability:.6f}",
                                 f"{issue.suggested_probability:.6f}",
                                 f"{issue.quality:.6f}", ""])
        os.replace(tmp, path)
        self.files["csv"] = path
        return path


def find_label_issues(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                      filenames: Sequence[str] | None = None) -> LabelIssues:
    """Flags the images confidently of another class than their label.

    Args:
        probs: `[N, C]` out-of-fold probabilities.
        labels: `[N]` given labels.
        classes: Class names.
        filenames: `N` names for the report (default: the indices).

    Returns:
        `LabelIssues`, issues ordered by `label_quality` (lowest first).

    Example:

    ```python
    issues = find_label_issues(probs, labels, ["cat", "dog"])
    for issue in issues.issues[:10]:
        print(issue.filename, issue.given, "->", issue.suggested)
    ```
    """
    check_probabilities(probs, labels)
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(classes) != probs.shape[1]:
        raise ValueError(f"classes: expected {probs.shape[1]} names, got {len(classes)}.")
    if filenames is not None and len(filenames) != len(labels):
        raise ValueError(f"filenames: expected {len(labels)} names, got {len(filenames)}.")
    thresholds = per_class_thresholds(probs, labels)
    confident = _confident_class(probs, thresholds)
    quality = label_quality(probs, labels)
    ranking = rank_label_issues(probs, labels)
    flagged = (confident >= 0) & (confident != labels)
    issues = [
        LabelIssue(
            index=int(i),
            filename=str(filenames[i]) if filenames is not None else str(int(i)),
            given=classes[labels[i]], suggested=classes[confident[i]],
            given_probability=float(probs[i, labels[i]]),
            suggested_probability=float(probs[i, confident[i]]),
            quality=float(quality[i]),
        )
        for i in ranking if flagged[i]
    ]
    return LabelIssues(issues=issues, num_images=len(labels), classes=list(classes),
                       confident_joint=confident_joint(probs, labels), thresholds=thresholds,
                       ranking=ranking)


def kfold_indices(labels: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Stratified folds: each class's images dealt round-robin after a seeded shuffle.

    Returns:
        `folds` disjoint index arrays covering every image.
    """
    if folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}.")
    labels = np.asarray(labels)
    if len(labels) < folds:
        raise ValueError(f"{len(labels)} images cannot be split into {folds} folds.")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        for k, index in enumerate(members):
            parts[(k + offset) % folds].append(int(index))
        offset += len(members)  # Classes smaller than `folds` spread over folds.
    return [np.sort(np.array(p, np.int64)) for p in parts]


def out_of_fold_probabilities(fit_predict: FitPredict, labels: np.ndarray, *,
                              num_classes: int, folds: int = 3, seed: int = 0,
                              progress: bool = True) -> np.ndarray:
    """Probabilities for every image from a model trained without it.

    Args:
        fit_predict: Trains a fresh model on `train_index` and returns its
            probabilities for `heldout_index`.
        labels: `[N]` given labels (for stratification).
        num_classes: `C`.
        folds: k of the k-fold split.
        seed: Seed of the split.
        progress: Print a line per fold.

    Returns:
        float32 `[N, C]`.

    Example:

    ```python
    def fit_predict(train, held):
        model = make_model(); model.fit(x[train], y[train], epochs=3)
        return model.predict(x[held])
    probs = out_of_fold_probabilities(fit_predict, y, num_classes=10, folds=3)
    ```
    """
    labels = np.asarray(labels)
    probs = np.full((len(labels), num_classes), np.nan, np.float32)
    parts = kfold_indices(labels, folds, seed)
    for k, held in enumerate(parts):
        train = np.sort(np.concatenate([p for j, p in enumerate(parts) if j != k]))
        if progress:
            print(f"Fold {k + 1}/{folds}: training on {len(train):,} images, predicting "
                  f"{len(held):,}.", flush=True)
        fold_probs = np.asarray(fit_predict(train, held), np.float32)
        if fold_probs.shape != (len(held), num_classes):
            raise ValueError(f"fit_predict: expected probabilities of shape "
                             f"{(len(held), num_classes)}, got {fold_probs.shape}.")
        probs[held] = fold_probs
    return probs


def precision_recall_at(ranking: np.ndarray, truly_wrong: np.ndarray, n: int) -> tuple[float, float]:
    """Precision and recall of the top `n` of `ranking` against known wrong labels.

    Args:
        ranking: Image indices, most doubtful first.
        truly_wrong: Indices known to be mislabelled.
        n: How many of the ranking are taken.

    Returns:
        `(precision, recall)`.
    """
    wrong = set(int(i) for i in truly_wrong)
    top = [int(i) for i in ranking[:n]]
    found = sum(1 for i in top if i in wrong)
    return (found / len(top) if top else 0.0, found / len(wrong) if wrong else 0.0)
