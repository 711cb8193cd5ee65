"""Classification metrics from predicted probabilities, in plain numpy.

Every function takes `probs` (float `[N, C]`, one row of class
probabilities per image) and/or integer `labels` (`[N]`, the true class ids)
and returns numpy values or plain Python structures ready for JSON.

Conventions follow scikit-learn's `zero_division=0`: a class that is never
predicted has precision 0, a class with no true images has recall 0, and no
warning is emitted for either.

Example:

```python
probs = model.predict(images)
print(top_k_accuracy(probs, labels, k=5))
cm = confusion_matrix(labels, probs.argmax(1), num_classes=10)
scores = per_class_scores(cm)
```
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOSS_EPSILON",
    "ClassScores",
    "check_probabilities",
    "top_k_accuracy",
    "confusion_matrix",
    "per_class_scores",
    "averages",
    "most_confused",
    "per_image_loss",
    "top_losses",
    "most_uncertain",
]

# Probabilities are clipped like Keras's cross-entropy does, so a confident
# mistake has a large but finite loss.
LOSS_EPSILON = 1e-7


def check_probabilities(probs: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Raises `ValueError` unless `probs` is `[N, C]` and `labels` is `[N]` in `[0, C)`."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(
            f"probs: expected a 2-D array [num_images, num_classes], got shape {probs.shape}."
        )
    if labels is None:
        return
    labels = np.asarray(labels)
    if labels.shape != (probs.shape[0],):
        raise ValueError(
            f"labels: expected shape ({probs.shape[0]},) to match probs {probs.shape}, "
            f"got {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(
            f"labels: expected class ids in [0, {probs.shape[1]}), got values in "
            f"[{labels.min()}, {labels.max()}]."
        )


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of images whose true class is among the `k` most probable.

    Ties at the boundary count as hits, as in `tf.math.in_top_k`: an image is
    a hit when fewer than `k` classes have a strictly higher probability than
    its true class.

    Args:
        probs: `[N, C]` probabilities.
        labels: `[N]` true class ids.
        k: Number of top classes considered (`k >= C` gives 1.0).

    Returns:
        The accuracy in `[0, 1]`; 0.0 for no images.

    Example:

    ```python
    top_k_accuracy(np.array([[0.1, 0.6, 0.3]]), np.array([2]), k=2)  # 1.0
    ```
    """
    if k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}.")
    check_probabilities(probs, labels)
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    true_prob = probs[np.arange(len(labels)), labels]
    higher = (probs > true_prob[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Args:
        labels: `[N]` true class ids.
        predicted: `[N]` predicted class ids.
        num_classes: Number of classes `C`.

    Returns:
        int64 `[C, C]`: rows are true classes, columns predicted classes.

    Example:

    ```python
    confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    # [[1, 0], [1, 1]]
    ```
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if labels.shape != predicted.shape:
        raise ValueError(
            f"labels and predicted: expected the same shape, got {labels.shape} "
            f"and {predicted.shape}."
        )
    for name, ids in (("labels", labels), ("predicted", predicted)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"{name}: expected class ids in [0, {num_classes}), got values in "
                f"[{ids.min()}, {ids.max()}]."
            )
    flat = np.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


@dataclass
class ClassScores:
    """Per-class scores, each a `[C]` array.

    Attributes:
        precision, recall, f1: Scores in `[0, 1]`.
        support: Images whose true class it is.
        predicted: Images predicted as it.
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray

    def to_rows(self, classes: list[str]) -> list[dict]:
        """One JSON-ready dict per class: name, precision, recall, f1, support, predicted."""
        return [
            {
                "class": name,
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
                "predicted": int(self.predicted[i]),
            }
            for i, name in enumerate(classes)
        ]


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (no warning)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def per_class_scores(cm: np.ndarray) -> ClassScores:
    """Precision, recall and F1 of every class from a confusion matrix.

    Args:
        cm: `[C, C]` confusion matrix, rows true, columns predicted.

    Returns:
        A `ClassScores`. Precision is 0 for a class never predicted, recall
        is 0 for a class with no true images, F1 is 0 when both are 0.

    Example:

    ```python
    scores = per_class_scores(confusion_matrix(y, p, 3))
    scores.f1  # array of 3 values
    ```
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm: expected a square [C, C] matrix, got shape {cm.shape}.")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return ClassScores(precision, recall, f1, support, predicted)


def averages(scores: ClassScores) -> dict[str, dict[str, float]]:
    """Macro and support-weighted averages of precision, recall and F1.

    Only classes that occur (as a true class or as a prediction) are
    averaged, as scikit-learn does by default, so classes absent from an
    evaluation split do not pull the macro average down.

    Args:
        scores: Per-class scores.

    Returns:
        `{"macro": {"precision", "recall", "f1"}, "weighted": {...}}`.
    """
    present = (scores.support > 0) | (scores.predicted > 0)
    result = {}
    for name in ("macro", "weighted"):
        weights = present.astype(np.float64) if name == "macro" else scores.support.astype(np.float64)
        total = weights.sum()
        result[name] = {
            metric: float(np.dot(getattr(scores, metric), weights) / total) if total else 0.0
            for metric in ("precision", "recall", "f1")
        }
    return result


def most_confused(cm: np.ndarray, classes: list[str], n: int = 10) -> list[dict]:
    """The `n` largest off-diagonal counts of a confusion matrix.

    Args:
        cm: `[C, C]` confusion matrix.
        classes: Class names, index = class id.
        n: Number of pairs to return.

    Returns:
        Dicts `{"true", "predicted", "count", "share"}` (share = count / images
        of the true class), largest count first, ties by true then predicted
        class id; pairs with a zero count are left out.
    """
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    true_ids, pred_ids = np.nonzero(off)
    counts = off[true_ids, pred_ids]
    # lexsort sorts by the last key first: count descending, then ids ascending.
    order = np.lexsort((pred_ids, true_ids, -counts))[:n]
    support = cm.sum(axis=1)
    return [
        {
            "true": classes[true_ids[i]],
            "predicted": classes[pred_ids[i]],
            "count": int(counts[i]),
            "share": float(counts[i] / support[true_ids[i]]),
        }
        for i in order
    ]


def per_image_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of every image: `-log(p[true class])`, clipped at `LOSS_EPSILON`.

    Args:
        probs: `[N, C]` probabilities.
        labels: `[N]` true class ids.

    Returns:
        float64 `[N]` losses.
    """
    check_probabilities(probs, labels)
    probs = np.asarray(probs, dtype=np.float64)
    true_prob = probs[np.arange(len(labels)), np.asarray(labels)]
    return -np.log(np.clip(true_prob, LOSS_EPSILON, 1.0))


def top_losses(losses: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` largest losses, largest first (ties: lower index first)."""
    losses = np.asarray(losses)
    return np.argsort(-losses, kind="stable")[:n]


def most_uncertain(probs: np.ndarray, n: int, by: str = "margin") -> np.ndarray:
    """Indices of the `n` least confident predictions, least confident first.

    Args:
        probs: `[N, C]` probabilities.
        n: Number of indices.
        by: `"margin"`: smallest gap between the two most probable classes;
            `"max_prob"`: lowest top probability.

    Returns:
        int `[min(n, N)]` indices (ties: lower index first).
    """
    check_probabilities(probs)
    probs = np.asarray(probs)
    if by == "max_prob":
        score = probs.max(axis=1)
    elif by == "margin":
        if probs.shape[1] < 2:
            raise ValueError("by='margin' needs at least 2 classes; use by='max_prob'.")
        top2 = np.partition(probs, -2, axis=1)[:, -2:]
        score = top2[:, 1] - top2[:, 0]
    else:
        raise ValueError(f"by: expected 'margin' or 'max_prob', got {by!r}.")
    return np.argsort(score, kind="stable")[:n]
