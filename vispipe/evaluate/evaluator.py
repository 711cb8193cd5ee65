"""Evaluates a trained classifier on a dataset split (DIGITS "test many").

The model runs over the split batch by batch; only its probabilities are
kept, plus the few images that end up in the top-losses and most-uncertain
grids, so a large split never has to fit in memory.

Files written to the output folder:

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
result = evaluate_run("runs/mnist", split="test")
print(result.summary_table())
```
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from vispipe.evaluate import metrics
from vispipe.evaluate.plots import (
    atomic_output,
    save_confusion_matrix,
    save_image_grid,
)
from vispipe.tables import format_table

__all__ = [
    "TOP_K",
    "EvaluationResult",
    "evaluate_model",
    "evaluate_run",
    "predict_probabilities",
    "read_run_info",
]

TOP_K = 5  # The "top-5" accuracy; fewer classes make it top-C (always 1.0).
_MOST_CONFUSED = 10


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
    files: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None
    dataset_dir: str | None = None
    which: str | None = None
    duration_s: float = 0.0

    @property
    def macro_f1(self) -> float:
        return self.macro["f1"]

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
                    [f"top-{self.top_k} accuracy", f"{100 * self.top5_accuracy:.2f}%"],
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


def predict_probabilities(model, images: np.ndarray) -> np.ndarray:
    """Runs `model` on one batch and returns float32 class probabilities.

    A model whose output is not a probability distribution (negative values
    or rows not summing to 1, e.g. logits from a custom network) gets a
    softmax applied, with a warning.

    Args:
        model: A Keras model taking float32 0-255 images `[B, H, W, C]`.
        images: The batch (any numeric dtype).

    Returns:
        float32 `[B, num_classes]`.
    """
    output = model.predict_on_batch(np.asarray(images, dtype=np.float32))
    probs = np.asarray(output, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(
            f"Model {model.name!r}: expected an output of shape [batch, num_classes], "
            f"got {probs.shape}."
        )
    if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        warnings.warn(
            f"Model {model.name!r} does not output probabilities (rows do not sum "
            "to 1); applying a softmax.",
            stacklevel=2,
        )
        shifted = np.exp(probs - probs.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    return probs


class _Keeper:
    """Keeps the images of the `n` lowest-scoring items seen so far."""

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


def _write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return path


def _evaluate_batches(
    model,
    batches: Iterable[tuple[np.ndarray, np.ndarray, Sequence[str] | None]],
    classes: Sequence[str],
    *,
    total: int,
    split: str,
    out_dir: str | None,
    top_losses: int,
    progress: bool,
    run_dir: str | None = None,
    dataset_dir: str | None = None,
    which: str | None = None,
) -> EvaluationResult:
    """Core of the evaluation: predicts batch by batch, then scores and writes."""
    start_time = time.perf_counter()
    classes = list(classes)
    num_classes = len(classes)
    all_probs, all_labels, all_names = [], [], []
    worst = _Keeper(top_losses)
    uncertain = _Keeper(top_losses if num_classes > 1 else 0)
    seen = 0
    with tqdm(total=total, desc=f"Evaluating {split}", unit="img", disable=not progress,
              leave=False) as bar:
        for images, labels, names in batches:
            probs = predict_probabilities(model, images)
            if probs.shape[1] != num_classes:
                raise ValueError(
                    f"Model {model.name!r} outputs {probs.shape[1]} classes, expected "
                    f"{num_classes} ({', '.join(classes[:5])}{'...' if num_classes > 5 else ''})."
                )
            labels = np.asarray(labels, dtype=np.int64)
            losses = metrics.per_image_loss(probs, labels)
            worst.offer(seen, -losses, images)
            if uncertain.n:
                top2 = np.sort(probs, axis=1)[:, -2:]
                uncertain.offer(seen, (top2[:, 1] - top2[:, 0]).astype(np.float64), images)
            all_probs.append(probs)
            all_labels.append(labels)
            # Images without a recorded file name are named by their index.
            names = names if names is not None else [""] * len(labels)
            all_names.extend(name or str(seen + i) for i, name in enumerate(names))
            seen += len(labels)
            bar.update(len(labels))
    if seen == 0:
        raise ValueError(f"Split {split!r}: no images to evaluate.")

    probs = np.concatenate(all_probs)
    labels = np.concatenate(all_labels)
    predicted = probs.argmax(axis=1)
    losses = metrics.per_image_loss(probs, labels)
    cm = metrics.confusion_matrix(labels, predicted, num_classes)
    scores = metrics.per_class_scores(cm)
    avg = metrics.averages(scores)
    top_k = min(TOP_K, num_classes)
    rows = np.arange(seen)

    def describe(i: int) -> dict[str, Any]:
        return {
            "index": int(i),
            "filename": all_names[i],
            "true": classes[labels[i]],
            "predicted": classes[predicted[i]],
            "probability": float(probs[i, predicted[i]]),
            "true_probability": float(probs[i, labels[i]]),
            "loss": float(losses[i]),
        }

    worst_ids = metrics.top_losses(losses, top_losses)
    result = EvaluationResult(
        split=split,
        classes=classes,
        num_images=seen,
        top1_accuracy=float(np.mean(predicted == labels)),
        top5_accuracy=metrics.top_k_accuracy(probs, labels, top_k),
        top_k=top_k,
        mean_loss=float(losses.mean()),
        per_class=scores.to_rows(classes),
        macro=avg["macro"],
        weighted=avg["weighted"],
        most_confused=metrics.most_confused(cm, classes, _MOST_CONFUSED),
        top_losses=[describe(i) for i in worst_ids],
        confusion_matrix=cm,
        run_dir=run_dir,
        dataset_dir=dataset_dir,
        which=which,
    )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        files = result.files
        files["confusion_matrix_csv"] = _write_csv(
            os.path.join(out_dir, "confusion_matrix.csv"),
            ["true\\predicted", *classes],
            ([name, *map(int, row)] for name, row in zip(classes, cm)),
        )
        files["confusion_matrix_png"] = save_confusion_matrix(
            cm, classes, os.path.join(out_dir, "confusion_matrix.png"),
            title=f"Confusion matrix ({split}, top-1 {100 * result.top1_accuracy:.2f}%)",
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
            ([all_names[i], classes[labels[i]], classes[predicted[i]],
              f"{probs[i, predicted[i]]:.6f}", f"{probs[i, labels[i]]:.6f}",
              f"{losses[i]:.6f}"] for i in rows),
        )
        if len(worst_ids):
            files["top_losses_png"] = save_image_grid(
                [worst.images[i] for i in worst_ids],
                [f"{classes[labels[i]]} -> {classes[predicted[i]]}\n"
                 f"p={probs[i, predicted[i]]:.2f} (true {probs[i, labels[i]]:.2f})"
                 for i in worst_ids],
                os.path.join(out_dir, "top_losses.png"),
                title=f"Top losses ({split}): true -> predicted",
            )
        if uncertain.n:
            unsure_ids = metrics.most_uncertain(probs, top_losses, by="margin")
            files["uncertain_png"] = save_image_grid(
                [uncertain.images[i] for i in unsure_ids],
                [_runner_up_title(probs[i], classes, classes[labels[i]]) for i in unsure_ids],
                os.path.join(out_dir, "uncertain.png"),
                title=f"Most uncertain ({split}): smallest margin between the top two",
            )
        files["metrics"] = os.path.join(out_dir, "metrics.json")
    result.duration_s = time.perf_counter() - start_time
    if out_dir is not None:
        with atomic_output(result.files["metrics"]) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(result.to_json(), f, indent=2)
    return result


def _runner_up_title(probs: np.ndarray, classes: list[str], true: str) -> str:
    first, second = np.argsort(-probs, kind="stable")[:2]
    return (f"{classes[first]} {probs[first]:.2f} / {classes[second]} {probs[second]:.2f}\n"
            f"true {true}")


def evaluate_model(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    filenames: Sequence[str] | None = None,
    out_dir: str | None = None,
    *,
    split: str = "eval",
    top_losses: int = 16,
    batch_size: int = 256,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluates a model on images held in memory.

    Args:
        model: A Keras model mapping float32 0-255 images `[B, H, W, C]` to
            class probabilities `[B, len(classes)]`.
        images: `[N, H, W, C]` images on the 0-255 scale (uint8 for the grids).
        labels: `[N]` true class ids.
        classes: Class names, index = label id.
        filenames: `N` names for `predictions.csv` and the top losses (default:
            the image indices).
        out_dir: Folder the files are written to; `None` writes nothing.
        split: Name recorded in the result.
        top_losses: Images in the top-losses and most-uncertain grids.
        batch_size: Inference batch size.
        progress: Show a progress bar.

    Returns:
        An `EvaluationResult`.

    Example:

    ```python
    x, y = load_arrays("datasets/mnist", "test")
    result = evaluate_model(model, x, y, classes, out_dir="eval/")
    result.top1_accuracy
    ```
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(
            f"images and labels: expected [N, H, W, C] images and N labels, got images "
            f"{images.shape} and labels {labels.shape}."
        )
    if filenames is not None and len(filenames) != len(labels):
        raise ValueError(
            f"filenames: expected {len(labels)} names, one per image, got {len(filenames)}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(
            f"labels: expected class ids in [0, {len(classes)}) for {len(classes)} classes, "
            f"got values in [{labels.min()}, {labels.max()}]."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}.")
    batches = (
        (images[i:i + batch_size], labels[i:i + batch_size],
         None if filenames is None else list(filenames[i:i + batch_size]))
        for i in range(0, len(labels), batch_size)
    )
    return _evaluate_batches(model, batches, classes, total=len(labels), split=split,
                             out_dir=out_dir, top_losses=top_losses, progress=progress)


def read_run_info(run_dir: str) -> dict[str, Any]:
    """A run folder's `run.json`; `FileNotFoundError` when it has none."""
    from vispipe.train.run_folder import RunFolder

    return RunFolder(run_dir).read_info()


def _check_run_matches_dataset(run: dict[str, Any], run_dir: str, info) -> None:
    run_classes = list(run.get("classes") or [])
    if run_classes != list(info.classes):
        differ = next((i for i, (a, b) in enumerate(zip(run_classes, info.classes)) if a != b),
                      min(len(run_classes), len(info.classes)))
        run_name = run_classes[differ] if differ < len(run_classes) else "<none>"
        data_name = info.classes[differ] if differ < len(info.classes) else "<none>"
        raise ValueError(
            f"Class list mismatch: run {run_dir!r} has {len(run_classes)} classes, dataset "
            f"{info.path!r} has {info.num_classes}; they first differ at label {differ}: "
            f"run {run_name!r}, dataset {data_name!r}."
        )
    shape = run.get("image_shape")
    if shape is not None and tuple(shape) != tuple(info.image_shape):
        raise ValueError(
            f"Image shape mismatch: run {run_dir!r} expects {tuple(shape)}, dataset "
            f"{info.path!r} stores {tuple(info.image_shape)}."
        )


def evaluate_run(
    run_dir: str,
    *,
    dataset_dir: str | None = None,
    split: str = "test",
    out_dir: str | None = None,
    top_losses: int = 16,
    batch_size: int = 256,
    which: str = "final",
    progress: bool = True,
) -> EvaluationResult:
    """Evaluates a training run's model on a split of its (or another) dataset.

    Args:
        run_dir: The run folder (`run.json`, `model.keras`, `checkpoints/`).
        dataset_dir: Dataset folder; default: the run's `dataset_dir`. Its
            class list and image shape must match the run's.
        split: `"train"`, `"val"` or `"test"`.
        out_dir: Output folder; default `<run_dir>/eval-<split>`.
        top_losses: Images in the top-losses and most-uncertain grids.
        batch_size: Inference batch size.
        which: Model to load: `"final"`, `"best"` or `"last"` checkpoint.
        progress: Show a progress bar.

    Returns:
        An `EvaluationResult` whose files are in `out_dir`.

    Raises:
        FileNotFoundError: No `run.json`, or the dataset folder is missing.
        ValueError: The split is absent from the dataset, or the run's class
            list or image shape differ from the dataset's.

    Example:

    ```python
    result = evaluate_run("runs/mnist", split="val", which="best")
    print(result.summary_table())
    ```
    """
    from vispipe.data.format import IncompleteDatasetError, read_dataset_info
    from vispipe.data.pipeline import make_dataset

    run = read_run_info(run_dir)
    dataset_dir = dataset_dir or run.get("dataset_dir")
    if not dataset_dir:
        raise ValueError(
            f"{os.path.join(run_dir, 'run.json')} names no dataset_dir; pass dataset_dir."
        )
    try:
        info = read_dataset_info(dataset_dir)
    except IncompleteDatasetError as error:
        raise IncompleteDatasetError(
            f"{error} (dataset of run {run_dir!r}; pass dataset_dir to use another)"
        ) from error
    if split not in info.splits:
        raise ValueError(
            f"Dataset {info.path!r} has no {split!r} split to evaluate; it has {info.splits}."
        )
    _check_run_matches_dataset(run, run_dir, info)
    from vispipe.train.run_folder import load_run_model

    model = load_run_model(run_dir, which=which)
    ds = make_dataset(info, split, batch_size, with_filenames=True)
    batches = (
        (images.astype(np.uint8), labels, [n.decode("utf-8", "replace") for n in names])
        for images, labels, names in ds.as_numpy_iterator()
    )
    out_dir = out_dir or os.path.join(run_dir, f"eval-{split}")
    return _evaluate_batches(
        model, batches, info.classes, total=info.split_counts[split], split=split,
        out_dir=out_dir, top_losses=top_losses, progress=progress,
        run_dir=run_dir, dataset_dir=info.path, which=which,
    )
