"""Evaluates a trained classifier on a dataset split (DIGITS "test many").

Three steps: predict (the model over the split, batch by batch, keeping
every probability and only the images the grids need), score (accuracy,
per-class scores, confusion matrix, top losses) and, with an output folder,
write the report (`vispipe.evaluate.report`).

Example:

```python
result = evaluate_run("runs/mnist", split="test")
print(result.summary_table())
```
"""

from __future__ import annotations

import os
import time
import warnings
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from vispipe.evaluate import metrics
from vispipe.evaluate.report import write_metrics, write_tables_and_figures
from vispipe.evaluate.results import EvaluationResult, ImageKeeper, Predictions
from vispipe.evaluate.tta import TtaSummary, View, tta_probabilities, tta_views

__all__ = [
    "TOP_K",
    "evaluate_model",
    "evaluate_run",
    "evaluate_splits",
    "predict_probabilities",
    "predict",
    "score",
]

TOP_K = 5  # The "top-5" accuracy; fewer classes make it top-C (always 1.0).
_MOST_CONFUSED = 10

if TYPE_CHECKING:
    from vispipe.configs import EvaluateConfig
    from vispipe.data.format import DatasetInfo
    from vispipe.train.run_info import RunInfo

Batches = Iterable[tuple[np.ndarray, np.ndarray, Sequence[str] | None]]


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


def _check_outputs(model, probs: np.ndarray, classes: Sequence[str]) -> None:
    if probs.shape[1] != len(classes):
        raise ValueError(
            f"Model {model.name!r} outputs {probs.shape[1]} classes, expected "
            f"{len(classes)} ({', '.join(classes[:5])}{'...' if len(classes) > 5 else ''})."
        )


def predict(model, batches: Batches, classes: Sequence[str], *, total: int, split: str,
            keep: int, progress: bool, views: Sequence[View] = ()) -> Predictions:
    """Runs `model` over `(images, labels, filenames or None)` batches.

    Args:
        model: The Keras model (float32 0-255 images in, probabilities out).
        batches: The split, batch by batch.
        classes: Class names, index = label id.
        total: Images in the split (for the progress bar).
        split: Its name (for messages).
        keep: Images kept for each of the top-losses and most-uncertain grids.
        progress: Show a progress bar.
        views: Test-time augmentation views (`vispipe.evaluate.tta`); the
            probabilities are then their mean.

    Returns:
        The `Predictions`.

    Raises:
        ValueError: No images, or a model whose outputs are not `classes`.
    """
    probabilities, plain, labels, names = [], [], [], []
    worst = ImageKeeper(keep)
    uncertain = ImageKeeper(keep if len(classes) > 1 else 0)
    with tqdm(total=total, desc=f"Evaluating {split}", unit="img", disable=not progress,
              leave=False) as bar:
        for images, batch_labels, batch_names in batches:
            if views:
                probs, identity = tta_probabilities(
                    lambda x: predict_probabilities(model, x), images, views)
                plain.append(identity)
            else:
                probs = predict_probabilities(model, images)
            _check_outputs(model, probs, classes)
            batch_labels = np.asarray(batch_labels, dtype=np.int64)
            seen = len(names)
            worst.offer(seen, -metrics.per_image_loss(probs, batch_labels), images)
            if uncertain.n:
                top2 = np.sort(probs, axis=1)[:, -2:]
                uncertain.offer(seen, (top2[:, 1] - top2[:, 0]).astype(np.float64), images)
            probabilities.append(probs)
            labels.append(batch_labels)
            # Images without a recorded file name are named by their index.
            batch_names = batch_names if batch_names is not None else [""] * len(batch_labels)
            names.extend(name or str(seen + i) for i, name in enumerate(batch_names))
            bar.update(len(batch_labels))
    if not names:
        raise ValueError(f"Split {split!r}: no images to evaluate.")
    probs, true = np.concatenate(probabilities), np.concatenate(labels)
    return Predictions(probs, true, names, metrics.per_image_loss(probs, true), worst, uncertain,
                       plain_probabilities=np.concatenate(plain) if plain else None,
                       views=[view.name for view in views])


def score(predictions: Predictions, classes: Sequence[str], *, split: str,
          top_losses: int) -> EvaluationResult:
    """Accuracy, per-class scores, confusion matrix and top losses of `predictions`.

    Example:

    ```python
    result = score(predict(model, batches, classes, total=n, split="test", keep=16,
                           progress=False), classes, split="test", top_losses=16)
    ```
    """
    classes = list(classes)
    probs, labels = predictions.probabilities, predictions.labels
    cm = metrics.confusion_matrix(labels, predictions.predicted, len(classes))
    scores = metrics.per_class_scores(cm)
    averages = metrics.averages(scores)
    top_k = min(TOP_K, len(classes))
    return EvaluationResult(
        split=split,
        classes=classes,
        num_images=len(labels),
        top1_accuracy=float(np.mean(predictions.predicted == labels)),
        top5_accuracy=metrics.top_k_accuracy(probs, labels, top_k),
        top_k=top_k,
        mean_loss=float(predictions.losses.mean()),
        per_class=scores.to_rows(classes),
        macro=averages["macro"],
        weighted=averages["weighted"],
        most_confused=metrics.most_confused(cm, classes, _MOST_CONFUSED),
        top_losses=[predictions.describe(i, classes)
                    for i in metrics.top_losses(predictions.losses, top_losses)],
        confusion_matrix=cm,
        tta=_tta_summary(predictions),
    )


def _tta_summary(predictions: Predictions) -> TtaSummary | None:
    if predictions.plain_probabilities is None:
        return None
    labels = predictions.labels
    return TtaSummary(
        views=list(predictions.views),
        top1_accuracy_without=float(np.mean(predictions.plain_probabilities.argmax(1) == labels)),
        top1_accuracy=float(np.mean(predictions.predicted == labels)),
    )


def _evaluate_batches(model, batches: Batches, classes: Sequence[str], *, total: int,
                      split: str, out_dir: str | None, top_losses: int, progress: bool,
                      views: Sequence[View] = (), **source: str | None) -> EvaluationResult:
    """Predict -> score -> write the report (when `out_dir` is given).

    `source` (`run_dir`, `dataset_dir`, `which`) is recorded in the result.
    """
    start_time = time.perf_counter()
    predictions = predict(model, batches, classes, total=total, split=split, keep=top_losses,
                          progress=progress, views=views)
    result = score(predictions, classes, split=split, top_losses=top_losses)
    for name, value in source.items():
        setattr(result, name, value)
    if out_dir is not None:
        write_tables_and_figures(result, predictions, out_dir, top_losses=top_losses)
        _write_top_losses_gradcam(model, result, predictions, out_dir)
    result.duration_s = time.perf_counter() - start_time
    if out_dir is not None:
        write_metrics(result, out_dir)
    return result


def _write_top_losses_gradcam(model, result: EvaluationResult, predictions: Predictions,
                              out_dir: str) -> None:
    """`top_losses_gradcam.png`: where the model looked for the class it wrongly chose."""
    from vispipe.evaluate.explain import save_gradcam_grid

    classes = result.classes
    path = save_gradcam_grid(
        model, [predictions.worst.images[r["index"]] for r in result.top_losses],
        [classes.index(r["predicted"]) for r in result.top_losses],
        [f"{r['true']} -> {r['predicted']}" for r in result.top_losses],
        os.path.join(out_dir, "top_losses_gradcam.png"),
        title=f"Top losses ({result.split}): Grad-CAM of the predicted class")
    if path:
        result.files["top_losses_gradcam_png"] = path


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


def _check_run_matches_dataset(run: RunInfo, info: DatasetInfo) -> None:
    if list(run.classes) != list(info.classes):
        differ = next((i for i, (a, b) in enumerate(zip(run.classes, info.classes)) if a != b),
                      min(run.num_classes, info.num_classes))
        run_name = run.classes[differ] if differ < run.num_classes else "<none>"
        data_name = info.classes[differ] if differ < info.num_classes else "<none>"
        raise ValueError(
            f"Class list mismatch: run {run.path!r} has {run.num_classes} classes, dataset "
            f"{info.path!r} has {info.num_classes}; they first differ at label {differ}: "
            f"run {run_name!r}, dataset {data_name!r}."
        )
    if run.image.shape != tuple(info.image_shape):
        raise ValueError(
            f"Image shape mismatch: run {run.path!r} expects {run.image.shape}, dataset "
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
    tta: bool = False,
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
        tta: Test-time augmentation: the mean over the views of the run's
            training augmentation (`vispipe.evaluate.tta`); `result.tta`
            reports the accuracy with and without.

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
    from vispipe.data.inputs import make_dataset
    from vispipe.train.run_folder import load_run_model, read_run_info

    run = read_run_info(run_dir)
    try:
        info = read_dataset_info(dataset_dir or run.dataset_dir)
    except IncompleteDatasetError as error:
        raise IncompleteDatasetError(
            f"{error} (dataset of run {run_dir!r}; pass dataset_dir to use another)"
        ) from error
    if split not in info.splits:
        raise ValueError(
            f"Dataset {info.path!r} has no {split!r} split to evaluate; it has {info.splits}."
        )
    _check_run_matches_dataset(run, info)
    model = load_run_model(run_dir, which=which)
    ds = make_dataset(info, split, batch_size, with_filenames=True)
    batches = (
        (images.astype(np.uint8), labels, [n.decode("utf-8", "replace") for n in names])
        for images, labels, names in ds.as_numpy_iterator()
    )
    return _evaluate_batches(
        model, batches, info.classes, total=info.split_counts[split], split=split,
        out_dir=out_dir or os.path.join(run_dir, f"eval-{split}"), top_losses=top_losses,
        progress=progress, views=tta_views(run.train.augment, run.image.shape) if tta else (),
        run_dir=run_dir, dataset_dir=info.path, which=which,
    )


def evaluate_splits(
    run_dir: str,
    config: EvaluateConfig,
    *,
    dataset_dir: str | None = None,
    out_dir: str | None = None,
    progress: bool = True,
) -> dict[str, EvaluationResult]:
    """Evaluates every split of `config.splits` that the dataset has.

    What `vispipe evaluate` and `vispipe run` do.

    Args:
        run_dir: The run folder.
        config: Splits, model (`which`), grid size and batch size.
        dataset_dir: Dataset folder; default: the run's.
        out_dir: Folder for one `eval-<split>` report folder per split;
            default: the run folder.
        progress: Show progress bars.

    Returns:
        `{split: EvaluationResult}`, in the order of `config.splits`.

    Raises:
        ValueError: The dataset has none of the splits.

    Example:

    ```python
    results = evaluate_splits("runs/mnist", EvaluateConfig(splits=["test"], which="best"))
    ```
    """
    from vispipe.data.format import read_dataset_info
    from vispipe.train.run_folder import read_run_info

    available = read_dataset_info(dataset_dir or read_run_info(run_dir).dataset_dir).splits
    splits = [s for s in config.splits if s in available]
    if not splits:
        raise ValueError(f"The dataset has none of the splits {config.splits} to evaluate; "
                         f"it has {available}.")
    return {split: evaluate_run(
        run_dir, dataset_dir=dataset_dir, split=split,
        out_dir=os.path.join(out_dir or run_dir, f"eval-{split}"),
        top_losses=config.top_losses, batch_size=config.batch_size, which=config.which,
        progress=progress, tta=config.tta) for split in splits}
