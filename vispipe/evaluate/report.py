"""The files of an evaluation: tables, figures and `metrics.json`.

Written to the output folder:

- `metrics.json`: `EvaluationResult.to_json()`;
- `confusion_matrix.csv` (class names as header and first column) and
  `confusion_matrix.png` (normalised per row);
- `per_class.csv`: precision, recall, F1, support per class;
- `predictions.csv`: filename, true class, predicted class, probability,
  probability of the true class and loss of every image;
- `top_losses.png` and `uncertain.png`: the most-wrong and least-confident
  images with their true and predicted classes.

Example:

```python
write_tables_and_figures(result, predictions, "eval/", top_losses=16)
write_metrics(result, "eval/")
```
"""

from __future__ import annotations

import csv
import os
from typing import Any, Iterable, Sequence

import numpy as np

from vispipe.evaluate import metrics
from vispipe.evaluate.plots import save_confusion_matrix, save_image_grid
from vispipe.fileio import atomic_path, write_json_atomic
from vispipe.evaluate.results import EvaluationResult, Predictions

__all__ = ["write_tables_and_figures", "write_metrics"]


def _write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return path


def _runner_up_title(probs: np.ndarray, classes: list[str], true: str) -> str:
    first, second = np.argsort(-probs, kind="stable")[:2]
    return (f"{classes[first]} {probs[first]:.2f} / {classes[second]} {probs[second]:.2f}\n"
            f"true {true}")


def _write_tables(result: EvaluationResult, preds: Predictions, out_dir: str) -> None:
    classes, probs, labels = result.classes, preds.probabilities, preds.labels
    predicted = preds.predicted
    files = result.files
    files["confusion_matrix_csv"] = _write_csv(
        os.path.join(out_dir, "confusion_matrix.csv"),
        ["true\\predicted", *classes],
        ([name, *map(int, row)] for name, row in zip(classes, result.confusion_matrix)),
    )
    files["per_class_csv"] = _write_csv(
        os.path.join(out_dir, "per_class.csv"),
        ["class", "precision", "recall", "f1", "support", "predicted"],
        ([r["class"], f"{r['precision']:.6f}", f"{r['recall']:.6f}", f"{r['f1']:.6f}",
          r["support"], r["predicted"]] for r in result.per_class),
    )
    files["predictions_csv"] = _write_csv(
        os.path.join(out_dir, "predictions.csv"),
        ["filename", "true", "predicted", "probability", "true_probability", "loss"],
        ([preds.filenames[i], classes[labels[i]], classes[predicted[i]],
          f"{probs[i, predicted[i]]:.6f}", f"{probs[i, labels[i]]:.6f}",
          f"{preds.losses[i]:.6f}"] for i in range(len(labels))),
    )


def _write_figures(result: EvaluationResult, preds: Predictions, out_dir: str,
                   top_losses: int) -> None:
    classes, probs, labels, split = result.classes, preds.probabilities, preds.labels, result.split
    files = result.files
    files["confusion_matrix_png"] = save_confusion_matrix(
        result.confusion_matrix, classes, os.path.join(out_dir, "confusion_matrix.png"),
        title=f"Confusion matrix ({split}, top-1 {100 * result.top1_accuracy:.2f}%)",
    )
    worst_ids = [r["index"] for r in result.top_losses]
    if worst_ids:
        files["top_losses_png"] = save_image_grid(
            [preds.worst.images[i] for i in worst_ids],
            [f"{r['true']} -> {r['predicted']}\n"
             f"p={r['probability']:.2f} (true {r['true_probability']:.2f})"
             for r in result.top_losses],
            os.path.join(out_dir, "top_losses.png"),
            title=f"Top losses ({split}): true -> predicted",
        )
    if preds.uncertain.n:
        unsure_ids = metrics.most_uncertain(probs, top_losses, by="margin")
        files["uncertain_png"] = save_image_grid(
            [preds.uncertain.images[i] for i in unsure_ids],
            [_runner_up_title(probs[i], classes, classes[labels[i]]) for i in unsure_ids],
            os.path.join(out_dir, "uncertain.png"),
            title=f"Most uncertain ({split}): smallest margin between the top two",
        )


def write_tables_and_figures(result: EvaluationResult, predictions: Predictions, out_dir: str,
                             *, top_losses: int) -> None:
    """Writes the CSV tables and PNG figures, recording each in `result.files`.

    Args:
        result: The scored evaluation.
        predictions: The pass it was scored from (probabilities and kept images).
        out_dir: The output folder (created if needed).
        top_losses: Images in the most-uncertain grid.
    """
    os.makedirs(out_dir, exist_ok=True)
    _write_tables(result, predictions, out_dir)
    _write_figures(result, predictions, out_dir, top_losses)


def write_metrics(result: EvaluationResult, out_dir: str) -> str:
    """Writes `metrics.json` (`result.to_json()`), last; returns its path."""
    result.files["metrics"] = os.path.join(out_dir, "metrics.json")
    return write_json_atomic(result.files["metrics"], result.to_json())
