"""Top-N classification of new images (DIGITS "classify one" / "classify many").

Inputs are an image file, a folder (every image file below it, sorted), a
list file (one path per line, optionally followed by a label: a class id or
a class name; relative paths are relative to the list file's folder), or a
list of paths. Images are loaded exactly as the run's dataset made them (the
size, channels and resize mode its `RunInfo.image` records). A file that cannot be used becomes a
`Prediction` with an `error` and does not stop the others.

Example:

```python
preds = classify("runs/mnist", "new_digits/")
print(predictions_table(preds))
write_predictions_csv(preds, "predictions.csv")
```
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from vispipe.configs import ImageOptions
from vispipe.data.format import ImageInput
from vispipe.evaluate.evaluator import predict_probabilities
from vispipe.fileio import atomic_path
from vispipe.tables import format_table

__all__ = [
    "IMAGE_EXTENSIONS",
    "Prediction",
    "classify",
    "collect_inputs",
    "run_image_options",
    "model_image_options",
    "load_for_inference",
    "accuracy",
    "predictions_table",
    "write_predictions_csv",
    "read_predictions_csv",
]

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp",
)


@dataclass
class Prediction:
    """The classification of one input.

    Attributes:
        path: The image file.
        top: `(class name, probability)` pairs, most probable first.
        label: The true class name, when the list file gave one.
        error: Why the file could not be classified (then `top` is empty).
        note: What loading changed, e.g. a color conversion.
        explanation: The Grad-CAM overlay PNG of the top class
            (`explain_dir`), when written.
    """

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    label: str | None = None
    error: str | None = None
    note: str | None = None
    explanation: str | None = None

    @property
    def predicted(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    @property
    def correct(self) -> bool | None:
        """Whether the top class is the label; `None` without label or prediction."""
        if self.label is None or not self.top:
            return None
        return self.predicted == self.label

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "predicted": self.predicted,
            "probability": self.probability,
            "top": [{"class": c, "probability": p} for c, p in self.top],
            "label": self.label,
            "error": self.error,
            "note": self.note,
            "explanation": self.explanation,
        }


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _parse_list_file(path: str, classes: Sequence[str]) -> list[tuple[str, str | None]]:
    """`(image path, label name or None)` per non-empty line of a list file."""
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            label = None
            parts = line.rsplit(maxsplit=1)
            if len(parts) == 2:
                token = parts[1]
                if token in classes:
                    label = token
                elif token.lstrip("-").isdigit():
                    index = int(token)
                    if not 0 <= index < len(classes):
                        raise ValueError(
                            f"{path}, line {number}: label {index} is out of range; expected "
                            f"a class id in [0, {len(classes)}) or a class name."
                        )
                    label = classes[index]
                # Otherwise the last word is part of a path containing spaces.
                if label is not None:
                    line = parts[0]
            image = line if os.path.isabs(line) else os.path.join(base, line)
            entries.append((image, label))
    return entries


def collect_inputs(
    inputs: str | Sequence[str], classes: Sequence[str]
) -> list[tuple[str, str | None]]:
    """Expands `inputs` into `(image path, label or None)` pairs.

    Args:
        inputs: An image file, a folder (image files found recursively,
            sorted by path), a list file, or a list of image paths.
        classes: Class names, to read the list file's labels.

    Returns:
        The pairs, in input order.

    Raises:
        FileNotFoundError: `inputs` is a path that does not exist.
        ValueError: A folder without images, or a list file label that is
            not a class.
    """
    if not isinstance(inputs, str):
        return [(os.fspath(p), None) for p in inputs]
    if os.path.isdir(inputs):
        found = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(inputs)
            for name in names
            if _is_image_file(name)
        )
        if not found:
            raise ValueError(
                f"Folder {inputs!r} holds no image files (expected extensions "
                f"{', '.join(IMAGE_EXTENSIONS)})."
            )
        return [(p, None) for p in found]
    if not os.path.exists(inputs):
        raise FileNotFoundError(f"Input {inputs!r} does not exist.")
    if _is_image_file(inputs):
        return [(inputs, None)]
    return _parse_list_file(inputs, classes)


def run_image_options(run_dir: str) -> ImageInput:
    """How images are loaded for a run's model: its `RunInfo.image`.

    Kept for the web UI; new code reads `read_run_info(run_dir).image`.

    Raises:
        NotARunFolderError: No `run.json`.
        OutdatedRunError: A run of an older format (the message says how to
            upgrade it).
    """
    from vispipe.train.run_folder import read_run_info

    return read_run_info(run_dir).image


def model_image_options(model) -> ImageInput:
    """Squash-resize to a bare model's `[H, W, C]` input (no run says otherwise)."""
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or None in shape:
        raise ValueError(
            f"Model {model.name!r} has input shape {model.input_shape}; pass image_options "
            "to say how images are resized."
        )
    return ImageInput(height=shape[0], width=shape[1], channels=shape[2], resize_mode="squash")


def load_for_inference(run_or_model, which: str = "final") -> tuple[Any, list[str], ImageInput]:
    """The model, class names and image input of a run folder, or of a bare model.

    Args:
        run_or_model: A run folder (read through its `RunInfo`), or a Keras
            model (classes: its output indices; images squashed to its input).
        which: For a run folder: `"final"`, `"best"` or `"last"` model.

    Returns:
        `(model, classes, image)`.

    Example:

    ```python
    model, classes, image = load_for_inference("runs/mnist", which="best")
    ```
    """
    if isinstance(run_or_model, (str, os.PathLike)):
        from vispipe.train.run_folder import load_run_model, read_run_info

        info = read_run_info(os.fspath(run_or_model))
        return load_run_model(info.path, which=which), list(info.classes), info.image
    model = run_or_model
    classes = [str(i) for i in range(model.output_shape[-1])]
    return model, classes, model_image_options(model)


@dataclass
class _Inference:
    """How `classify` turns a batch into predictions.

    Attributes:
        model: The classifier.
        classes: Class names.
        k: Classes reported per image.
        image_options: How files are loaded.
        views: Test-time augmentation views (empty: the image as it is).
        overlays: Writes the Grad-CAM overlays, when asked.
    """

    model: Any
    classes: list[str]
    k: int
    image_options: ImageOptions | ImageInput
    views: list = field(default_factory=list)
    overlays: Any = None


def _classify_chunk(chunk: list[Prediction], how: _Inference) -> None:
    """Loads and classifies one batch of predictions in place."""
    from vispipe.data.images import ImageError, load_image

    loaded, images = [], []
    for pred in chunk:
        try:
            image, pred.note = load_image(pred.path, how.image_options)
        except (ImageError, OSError) as error:
            pred.error = str(error) or type(error).__name__
            continue
        loaded.append(pred)
        images.append(image)
    if not images:
        return
    batch = np.stack(images)
    if how.views:
        from vispipe.evaluate.tta import predict_tta

        probs = predict_tta(lambda x: predict_probabilities(how.model, x), batch, how.views)
    else:
        probs = predict_probabilities(how.model, batch)
    if probs.shape[1] != len(how.classes):
        raise ValueError(
            f"Model {how.model.name!r} outputs {probs.shape[1]} classes, but "
            f"{len(how.classes)} class names were given."
        )
    order = np.argsort(-probs, axis=1, kind="stable")[:, :how.k]
    for pred, row, ids in zip(loaded, probs, order):
        pred.top = [(how.classes[i], float(row[i])) for i in ids]
    if how.overlays is not None:
        paths = how.overlays.write(batch, [p.path for p in loaded], order[:, 0])
        for pred, path in zip(loaded, paths):
            pred.explanation = path


def _tta_views(run_or_model, image: ImageInput) -> list:
    """The views of the run's training augmentation (a run folder is needed)."""
    from vispipe.evaluate.tta import tta_views
    from vispipe.train.run_folder import read_run_info

    if not isinstance(run_or_model, (str, os.PathLike)):
        raise ValueError("tta: test-time augmentation follows a run's training augmentation; "
                         "pass the run folder, not a model.")
    return tta_views(read_run_info(os.fspath(run_or_model)).train.augment, image.shape)


def classify(
    run_dir,
    inputs: str | Sequence[str],
    *,
    top_k: int = 5,
    classes: Sequence[str] | None = None,
    image_options: ImageOptions | ImageInput | None = None,
    batch_size: int = 64,
    which: str = "final",
    progress: bool = True,
    tta: bool = False,
    explain_dir: str = "",
) -> list[Prediction]:
    """Top-k classes of every input image.

    Args:
        run_dir: A run folder, or a Keras model (float32 0-255 images in,
            probabilities out).
        inputs: An image file, a folder, a list file (`path [label]` per
            line), or a list of image paths.
        top_k: Classes reported per image (at most the number of classes).
        classes: Class names; default: the run's (for a model: its output
            indices as strings).
        image_options: How to load images; default: the run's
            `RunInfo.image` (for a model: squash to its input shape).
        batch_size: Inference batch size.
        which: For a run folder: `"final"`, `"best"` or `"last"` model.
        progress: Show a progress bar.
        tta: Average the probabilities over the views of the run's training
            augmentation (`vispipe.evaluate.tta`; needs a run folder).
        explain_dir: Write a Grad-CAM overlay PNG of the top class of every
            image here (`Prediction.explanation`); "" writes none.

    Returns:
        One `Prediction` per input image, in input order; unusable files
        carry an `error`.

    Example:

    ```python
    preds = classify("runs/cifar", "photos.txt", top_k=3)
    print(predictions_table(preds), accuracy(preds))
    ```
    """
    if top_k < 1:
        raise ValueError(f"top_k: expected an integer >= 1, got {top_k!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}.")
    model, run_classes, run_image = load_for_inference(run_dir, which)
    classes, image_options = list(classes or run_classes), image_options or run_image
    predictions = [Prediction(path=p, label=label) for p, label in collect_inputs(inputs, classes)]
    how = _Inference(model, classes, min(top_k, len(classes)), image_options,
                     views=_tta_views(run_dir, run_image) if tta else [])
    if explain_dir:
        from vispipe.evaluate.explain import OverlayWriter

        how.overlays = OverlayWriter(model, explain_dir)
    with tqdm(total=len(predictions), desc="Classifying", unit="img", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(predictions), batch_size):
            chunk = predictions[start:start + batch_size]
            _classify_chunk(chunk, how)
            bar.update(len(chunk))
    return predictions


def accuracy(predictions: Sequence[Prediction]) -> float | None:
    """Top-1 accuracy over the labelled, successfully classified predictions.

    Returns:
        The share in `[0, 1]`, or `None` when no prediction has a label.
    """
    judged = [p.correct for p in predictions if p.correct is not None]
    return sum(judged) / len(judged) if judged else None


def predictions_table(predictions: Sequence[Prediction]) -> str:
    """A text table: path, top class and probability, the other top classes,
    and the label when known; then the accuracy and error count."""
    labelled = any(p.label is not None for p in predictions)
    rows = []
    for p in predictions:
        if p.error:
            row = [p.path, "ERROR", None, p.error]
        else:
            others = ", ".join(f"{c} {prob:.3f}" for c, prob in p.top[1:])
            row = [p.path, p.predicted, f"{p.probability:.4f}", others]
        if labelled:
            if p.correct is None:
                row.append(p.label or "-")
            else:
                row.append(f"{p.label} ({'ok' if p.correct else 'wrong'})")
        rows.append(row)
    headers = ["image", "prediction", "probability", "next"] + (["label"] if labelled else [])
    lines = [format_table(rows, headers)]
    acc = accuracy(predictions)
    if acc is not None:
        judged = sum(p.correct is not None for p in predictions)
        lines.append(f"\nAccuracy: {100 * acc:.2f}% of {judged} labelled images")
    errors = sum(p.error is not None for p in predictions)
    if errors:
        lines.append(f"\n{errors} of {len(predictions)} files could not be classified.")
    return "\n".join(lines)


def write_predictions_csv(predictions: Sequence[Prediction], path: str) -> str:
    """Writes one row per prediction: path, label, predicted, probability,
    error, then `class_i, prob_i` for each of the top classes.

    Returns:
        `path`.
    """
    k = max((len(p.top) for p in predictions), default=0)
    header = ["path", "label", "predicted", "probability", "error"]
    for i in range(1, k + 1):
        header += [f"class_{i}", f"prob_{i}"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for p in predictions:
                row = [p.path, p.label or "", p.predicted or "",
                       "" if p.probability is None else f"{p.probability:.6f}", p.error or ""]
                for name, prob in p.top:
                    row += [name, f"{prob:.6f}"]
                writer.writerow(row + [""] * (len(header) - len(row)))
    return path


def read_predictions_csv(path: str) -> list[Prediction]:
    """The predictions of a file `write_predictions_csv` wrote, in its order.

    Columns are read by their header names, so a file with more or fewer top
    classes (`class_i`, `prob_i`) reads the same way.

    Raises:
        ValueError: The file lacks one of the columns `write_predictions_csv`
            writes (named).
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "predicted", "probability", "error"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: expected a predictions CSV of `vispipe classify`; "
                             f"missing columns {sorted(missing)}.")
        ranks = range(1, 1 + sum(name.startswith("class_") for name in reader.fieldnames))
        return [Prediction(path=row["path"], label=row["label"] or None, error=row["error"] or None,
                           top=[(row[f"class_{i}"], float(row[f"prob_{i}"])) for i in ranks
                                if row[f"class_{i}"]])
                for row in reader]
