"""The contract every exported artifact keeps, and the graph that implements it.

An exported model takes uint8 pixels `[batch, height, width, channels]`
(any batch size) and returns the class probabilities plus the top-k label
ids and scores. The run's resize (a bilinear squash to the trained size) and
normalization run inside the graph, so a client sends raw pixels. The
SavedModel additionally accepts encoded JPEG/PNG/GIF/BMP bytes and
serialized `tf.train.Example`s (TF Serving's classify API).

`RunSpec` is what every artifact carries beside it (`export.json`): labels,
input size, preprocessing and the source run.

Example:

```python
spec, model = load_run("runs/mnist")
fn = serving_function(model, spec, resize=True)
outputs = fn(tf.zeros([2, 40, 40, 1], tf.uint8))  # probabilities, label_ids, scores
serving_archive(model, spec).write_out("out/savedmodel/mnist/1")
```
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import tensorflow as tf

from vispipe.data.format import FEATURE_IMAGE, LABELS_FILE
from vispipe.train.run_folder import RunFolder
from vispipe.train.run_info import RunInfo

__all__ = [
    "INPUT_IMAGES",
    "INPUT_BYTES",
    "INPUT_EXAMPLES",
    "OUTPUT_PROBABILITIES",
    "OUTPUT_LABEL_IDS",
    "OUTPUT_SCORES",
    "OUTPUT_CLASSES",
    "IncompleteRunError",
    "RunSpec",
    "load_run",
    "serving_function",
    "serving_archive",
]

INPUT_IMAGES = "images"  # uint8 [B, H, W, C]
INPUT_BYTES = "image_bytes"  # string [B]: encoded JPEG/PNG/GIF/BMP
INPUT_EXAMPLES = "inputs"  # string [B]: serialized tf.train.Example (classify)
OUTPUT_PROBABILITIES = "probabilities"  # float32 [B, num_classes]
OUTPUT_LABEL_IDS = "label_ids"  # int32 [B, k]
OUTPUT_SCORES = "scores"  # float32 [B, k]
OUTPUT_CLASSES = "classes"  # string [B, k] (SavedModel only)


class IncompleteRunError(ValueError):
    """The run folder cannot be exported (missing files, wrong version or status)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What an exported model needs to know about its training run.

    Attributes:
        name: Export name (default: the run name), used for file names and
            as the TF Serving model name.
        run_dir: Absolute path of the source run folder.
        run_name: The run's name in `run.json`.
        classes: Class names, index = label id.
        image_shape: `(height, width, channels)` the model was trained on.
        preprocess: The run's normalization (`{"mode", "mean", "std"}`),
            already inside the model.
        resize_mode: How the dataset resized images (the in-graph resize is
            always a bilinear squash; other modes are done by the client).
        dataset_dir: The dataset the run trained on.
        top_k: Number of top labels every artifact returns.
    """

    name: str
    run_dir: str
    run_name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    preprocess: dict[str, Any]
    resize_mode: str
    dataset_dir: str
    top_k: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        """The `export.json` content (without the per-format entries)."""
        height, width, channels = self.image_shape
        preprocess = {k: v for k, v in self.preprocess.items() if k != "mean_image_file"}
        if preprocess.get("mode") == "image":
            preprocess["mean"] = "mean image (inside the model)"
        return {
            "name": self.name,
            "source_run": {"path": self.run_dir, "name": self.run_name},
            "dataset_dir": self.dataset_dir,
            "labels": list(self.classes),
            "input": {
                "name": INPUT_IMAGES, "dtype": "uint8",
                "shape": [None, height, width, channels],
                "range": [0, 255],
                "resize": f"bilinear squash to {height}x{width} inside the graph "
                          f"(the dataset used resize_mode={self.resize_mode!r})",
            },
            "preprocess": preprocess,
            "outputs": {
                OUTPUT_PROBABILITIES: f"float32 [batch, {self.num_classes}]",
                OUTPUT_LABEL_IDS: f"int32 [batch, {self.top_k}], best first",
                OUTPUT_SCORES: f"float32 [batch, {self.top_k}], best first",
            },
        }


def load_run(
    run_dir: str | os.PathLike,
    *,
    name: str = "",
    which: str = "final",
    top_k: int = 5,
):
    """Reads and checks a completed run folder and loads its model.

    Args:
        run_dir: The run folder (`run.json`, `model.keras`, `labels.txt`).
        name: Export name (default: the run's name).
        which: Which model: "final", "best" or "last" (see
            `vispipe.train.run_folder.load_run_model`).
        top_k: Top labels to return (capped at the number of classes).

    Returns:
        `(spec, model)`: the `RunSpec` and the Keras model (float32 0-255
        images in, probabilities out).

    Raises:
        IncompleteRunError: No `run.json`, an older or unknown run format
            (the message says how to upgrade), a missing field, a run that is
            not "completed", a missing model or `labels.txt`, or labels that
            disagree with `run.json`.

    Example:

    ```python
    spec, model = load_run("runs/mnist", which="best")
    ```
    """
    from vispipe.train.run_folder import load_run_model

    run = RunFolder(run_dir)
    try:
        info = run.read_run_info()
    except (FileNotFoundError, ValueError) as e:  # Missing, outdated or damaged run.json.
        raise IncompleteRunError(str(e)) from None
    if info.status != "completed":
        raise IncompleteRunError(
            f"Run {run.path!r} has status {info.status!r}; only a 'completed' run "
            "can be exported (finish or resume it first)."
        )
    labels = _read_labels(run, info)
    try:
        model = load_run_model(run.path, which)
    except FileNotFoundError as e:
        raise IncompleteRunError(str(e)) from None
    if tuple(model.input_shape[1:]) != info.image.shape:
        raise IncompleteRunError(
            f"Run {run.path!r}: run.json says image {info.image.shape}, the model takes "
            f"{tuple(model.input_shape[1:])}."
        )
    spec = RunSpec(
        name=name or info.name or os.path.basename(run.path),
        run_dir=run.path,
        run_name=info.name,
        classes=tuple(labels),
        image_shape=info.image.shape,
        preprocess=info.normalization.to_json(),
        resize_mode=info.image.resize_mode,
        dataset_dir=info.dataset_dir,
        top_k=max(1, min(top_k, len(labels))),
    )
    return spec, model


def _read_labels(run: RunFolder, info: RunInfo) -> list[str]:
    """`labels.txt`, checked against `run.json`'s classes."""
    labels_path = run.file(LABELS_FILE)
    if not os.path.isfile(labels_path):
        raise IncompleteRunError(f"Run {run.path!r} has no {LABELS_FILE}.")
    with open(labels_path, encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f if line.strip()]
    if labels != info.classes:
        raise IncompleteRunError(
            f"{labels_path} lists {len(labels)} classes {labels[:5]}..., run.json has "
            f"{info.num_classes} {info.classes[:5]}...; the run folder is inconsistent."
        )
    return labels


def serving_function(model, spec: RunSpec, *, resize: bool) -> Callable:
    """The contract as a function of a uint8 image batch.

    Args:
        model: The Keras model (float32 0-255 in, probabilities out).
        spec: The run.
        resize: Squash-resize (bilinear) inputs of any height/width to the
            trained size. A bilinear resize to the same size is the
            identity, so a right-sized image is unchanged.

    Returns:
        `fn(images) -> {probabilities, label_ids, scores}` (TensorFlow ops,
        to be wrapped in a `tf.function`).
    """
    height, width, _ = spec.image_shape

    def fn(images):
        x = tf.cast(images, tf.float32)
        if resize:
            x = tf.image.resize(x, (height, width), method="bilinear")
        probabilities = tf.cast(model(x, training=False), tf.float32)
        scores, label_ids = tf.math.top_k(probabilities, k=spec.top_k)
        return {
            OUTPUT_PROBABILITIES: probabilities,
            OUTPUT_LABEL_IDS: tf.cast(label_ids, tf.int32),
            OUTPUT_SCORES: scores,
        }

    return fn


def serving_archive(model, spec: RunSpec, *, full: bool = True):
    """A Keras `ExportArchive` whose endpoints implement the contract.

    Endpoints (signature keys once written):

    - `serving_default`: uint8 `images` `[B, H?, W?, C]` -> probabilities,
      label ids, scores and `classes` (names); any image size is resized.
    - `serving_bytes` (with `full`): string `image_bytes` `[B]` of encoded
      JPEG/PNG/GIF/BMP images -> the same outputs.
    - `classify` (with `full`): string `inputs` `[B]` of serialized
      `tf.train.Example`s holding `image/encoded` -> `classes`, `scores`
      (TF Serving's classify API).

    An `ExportArchive` (not a plain `tf.Module`) is used because it lifts the
    Keras 3 variables so converters can freeze them.

    Args:
        model: The Keras model.
        spec: The run.
        full: Add the bytes and classify endpoints (TF.js and TFLite need
            only `serving_default`).

    Returns:
        The archive; `archive.write_out(path)` writes the SavedModel.

    Example:

    ```python
    serving_archive(model, spec).write_out("out/savedmodel/mnist/1")
    ```
    """
    import keras

    height, width, channels = spec.image_shape
    predict = serving_function(model, spec, resize=True)
    labels = tf.constant(list(spec.classes))

    def with_classes(outputs):
        outputs[OUTPUT_CLASSES] = tf.gather(labels, outputs[OUTPUT_LABEL_IDS])
        return outputs

    def decode(encoded):
        def one(data):
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
            image = tf.image.resize(tf.cast(image, tf.float32), (height, width), method="bilinear")
            return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

        return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec(
            [height, width, channels], tf.uint8))

    def images_fn(images):
        return with_classes(predict(images))

    def bytes_fn(image_bytes):
        return with_classes(predict(decode(image_bytes)))

    def classify_fn(inputs):
        features = tf.io.parse_example(
            inputs, {FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string)})
        outputs = with_classes(predict(decode(features[FEATURE_IMAGE])))
        return {OUTPUT_CLASSES: outputs[OUTPUT_CLASSES], OUTPUT_SCORES: outputs[OUTPUT_SCORES]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", images_fn, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.uint8, INPUT_IMAGES)])
    if full:
        archive.add_endpoint("serving_bytes", bytes_fn, input_signature=[
            tf.TensorSpec([None], tf.string, INPUT_BYTES)])
        archive.add_endpoint("classify", classify_fn, input_signature=[
            tf.TensorSpec([None], tf.string, INPUT_EXAMPLES)])
    return archive
