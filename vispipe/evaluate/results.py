"""What an evaluation produces: the model's predictions over a split, and the scores.

`Predictions` keeps every probability but only the few images that end up
in the top-losses and most-uncertain grids, so a large split never has to
fit in memory. `EvaluationResult` is the scored outcome.

Example:

```python
result = evaluate_run("runs/mnist", split="test")
print(result.top1_accuracy, result.to_json()["macro_f1"])
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vispipe.evaluate.tta import TtaSummary
from vispipe.tables import format_table

__all__ = ["ImageKeeper", "Predictions", "EvaluationResult"]


class ImageKeeper:
    """Keeps the images of the `n` lowest-scoring items seen so far.

    Example:

    ```python
    worst = ImageKeeper(16)
    worst.offer(0, -losses, images)  # the 16 highest losses so far
    ```
    """

    def __init__(self, n: int):
        self.n = n
        self.index = np.zeros((0,), np.int64)
        self.score = np.zeros((0,), np.float64)
        self.images: dict[int, np.ndarray] = {}

    def offer(self, start: int, scores: np.ndarray, images: np.ndarray) -> None:
        index = np.concatenate([self.index, start + np.arange(len(scores))])
        score = np.concatenate([self.score, scores])
        keep = np.lexsort((index, score))[: self.n]
        self.index, self.score = index[keep], score[keep]
        kept = set(self.index.tolist())
        for i in range(len(scores)):
            if start + i in kept:
                self.images[start + i] = np.array(images[i])
        self.images = {i: im for i, im in self.images.items() if i in kept}


@dataclass
class Predictions:
    """One pass of a model over a split.

    Attributes:
        probabilities: float32 `[N, C]`.
        labels: int64 `[N]` true class ids.
        filenames: `N` names (the image index when none was recorded).
        losses: float64 `[N]` cross-entropy per image.
        worst: Images of the highest losses (scored by `-loss`).
        uncertain: Images of the smallest top-two margins.
        plain_probabilities: With test-time augmentation, the identity
            view's probabilities (`probabilities` are the mean over views).
        views: The test-time augmentation views' names (empty: none).
    """

    probabilities: np.ndarray
    labels: np.ndarray
    filenames: list[str]
    losses: np.ndarray
    worst: ImageKeeper
    uncertain: ImageKeeper
    plain_probabilities: np.ndarray | None = None
    views: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def describe(self, i: int, classes: list[str]) -> dict[str, Any]:
        """Image `i`: index, filename, true and predicted class, probabilities, loss."""
        label, predicted = self.labels[i], int(self.probabilities[i].argmax())
        return {
            "index": int(i),
            "filename": self.filenames[i],
            "true": classes[label],
            "predicted": classes[predicted],
            "probability": float(self.probabilities[i, predicted]),
            "true_probability": float(self.probabilities[i, label]),
            "loss": float(self.losses[i]),
        }


@dataclass
class EvaluationResult:
    """Metrics of one evaluation.

    Attributes:
        split: The evaluated split (or a caller-chosen name).
        classes: Class names, index = label id.
        num_images: Images evaluated.
        top1_accuracy: Share of images whose most probable class is true.
        top5_accuracy: Share whose true class is among the `top_k` most
            probable (`top_k = min(5, number of classes)`).
        top_k: The k of `top5_accuracy`.
        mean_loss: Mean cross-entropy.
        per_class: Per class: class, precision, recall, f1, support, predicted.
        macro: Macro averages `{"precision", "recall", "f1"}` over the classes
            that occur.
        weighted: Support-weighted averages, likewise.
        most_confused: Largest off-diagonal confusions, `{"true",
            "predicted", "count", "share"}` each.
        top_losses: The most-wrong images, `{"index", "filename", "true",
            "predicted", "probability", "true_probability", "loss"}` each.
        confusion_matrix: `[C, C]` counts, rows true, columns predicted.
        tta: What test-time augmentation changed, when used.
        files: Written files by kind (`"metrics"`, `"confusion_matrix_csv"`...).
        run_dir, dataset_dir, which: Where the model and images came from,
            when known.
        duration_s: Seconds the evaluation took.
    """

    split: str
    classes: list[str]
    num_images: int
    top1_accuracy: float
    top5_accuracy: float
    top_k: int
    mean_loss: float
    per_class: list[dict[str, Any]]
    macro: dict[str, float]
    weighted: dict[str, float]
    most_confused: list[dict[str, Any]]
    top_losses: list[dict[str, Any]]
    confusion_matrix: np.ndarray
    tta: TtaSummary | None = None
    files: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None
    dataset_dir: str | None = None
    which: str | None = None
    duration_s: float = 0.0

    @property
    def macro_f1(self) -> float:
        return self.macro["f1"]

    @property
    def balanced_accuracy(self) -> float:
        """Mean per-class recall over the classes that occur (= macro recall);
        unlike top-1 accuracy, a minority class counts as much as a majority one."""
        return self.macro["recall"]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (the confusion matrix is in its CSV, not here)."""
        return {
            "split": self.split,
            "num_images": self.num_images,
            "num_classes": len(self.classes),
            "top1_accuracy": self.top1_accuracy,
            "top5_accuracy": self.top5_accuracy,
            "top_k": self.top_k,
            "mean_loss": self.mean_loss,
            "balanced_accuracy": self.balanced_accuracy,
            "tta": self.tta.to_json() if self.tta else None,
            "macro_precision": self.macro["precision"],
            "macro_recall": self.macro["recall"],
            "macro_f1": self.macro["f1"],
            "weighted_precision": self.weighted["precision"],
            "weighted_recall": self.weighted["recall"],
            "weighted_f1": self.weighted["f1"],
            "classes": list(self.classes),
            "per_class": self.per_class,
            "most_confused": self.most_confused,
            "top_losses": self.top_losses,
            "files": dict(self.files),
            "run_dir": self.run_dir,
            "dataset_dir": self.dataset_dir,
            "which": self.which,
            "duration_s": self.duration_s,
        }

    def _tta_rows(self) -> list[list[str]]:
        if self.tta is None:
            return []
        return [[f"top-1 without TTA ({len(self.tta.views)} views)",
                 f"{100 * self.tta.top1_accuracy_without:.2f}%"],
                ["TTA change", f"{100 * self.tta.change:+.2f} points"]]

    def summary_table(self) -> str:
        """Overall metrics, a per-class table and the most confused pairs, as text."""
        source = f" of {self.run_dir}" if self.run_dir else ""
        lines = [
            f"Evaluation{source} on split {self.split!r}: {self.num_images:,} images, "
            f"{len(self.classes)} classes",
            "",
            format_table(
                [
                    ["top-1 accuracy", f"{100 * self.top1_accuracy:.2f}%"],
                    *self._tta_rows(),
                    [f"top-{self.top_k} accuracy", f"{100 * self.top5_accuracy:.2f}%"],
                    ["balanced accuracy", f"{100 * self.balanced_accuracy:.2f}%"],
                    ["mean loss", self.mean_loss],
                    ["macro F1", self.macro["f1"]],
                    ["weighted F1", self.weighted["f1"]],
                ],
                ["metric", "value"],
            ),
            "",
            format_table(
                [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]]
                 for r in self.per_class],
                ["class", "precision", "recall", "f1", "support"],
            ),
        ]
        if self.most_confused:
            lines += ["", format_table(
                [[c["true"], c["predicted"], c["count"], f"{100 * c['share']:.1f}%"]
                 for c in self.most_confused],
                ["true", "predicted as", "count", "of true class"],
            )]
        if self.files:
            folder = os.path.dirname(next(iter(self.files.values())))
            lines += ["", f"Files written to {folder}: "
                      + ", ".join(os.path.basename(p) for p in self.files.values())]
        return "\n".join(lines)


