"""SavedModel in TF Serving's layout, with warm-up requests and a models.config.

```
savedmodel/
  models.config                      # model_config_list pointing at <name>/
  <name>/<version>/saved_model.pb
  <name>/<version>/variables/
  <name>/<version>/assets.extra/tf_serving_warmup_requests
```

Signatures: `serving_default` (uint8 `images` of any size -> probabilities,
label_ids, scores, classes), `serving_bytes` (encoded `image_bytes`) and
`classify` (method `tensorflow/serving/classify`: serialized
`tf.train.Example`s with `image/encoded` in `inputs` -> `classes`, `scores`).

Example:

```python
path = write_savedmodel(model, spec, "exports/mnist/savedmodel", samples)
probs = savedmodel_runner(path)(images)
```
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import tensorflow as tf

from vispipe.export.contract import (
    INPUT_EXAMPLES,
    INPUT_IMAGES,
    OUTPUT_PROBABILITIES,
    RunSpec,
    serving_archive,
)
from vispipe.data.format import FEATURE_IMAGE

__all__ = [
    "CLASSIFY_METHOD",
    "WARMUP_FILE",
    "write_savedmodel",
    "write_models_config",
    "savedmodel_runner",
    "classify_examples",
]

CLASSIFY_METHOD = "tensorflow/serving/classify"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _set_classify_method(version_dir: str) -> None:
    # tf.saved_model.save marks every signature "predict"; TF Serving's
    # Classify API only serves signatures whose method is "classify".
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(version_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    proto.meta_graphs[0].signature_def["classify"].method_name = CLASSIFY_METHOD
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def _write_warmup(version_dir: str, name: str, samples: np.ndarray) -> int:
    from tensorflow_serving.apis import (
        classification_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    folder = os.path.join(version_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    logs = []
    for batch in (samples[:1], samples):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=name, signature_name="serving_default"))
        request.inputs[INPUT_IMAGES].CopyFrom(tf.make_tensor_proto(batch))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    classify = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=name, signature_name="classify"))
    for image in samples:
        example = classify.input.example_list.examples.add()
        encoded = tf.io.encode_png(tf.constant(image)).numpy()
        example.features.feature[FEATURE_IMAGE].bytes_list.value.append(encoded)
    logs.append(prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=classify)))
    with tf.io.TFRecordWriter(os.path.join(version_dir, WARMUP_FILE)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)


def write_savedmodel(
    model, spec: RunSpec, folder: str, samples: np.ndarray, *, version: int = 1
) -> str:
    """Writes the serving SavedModel as `<folder>/<spec.name>/<version>/`.

    Args:
        model: The Keras model.
        spec: The run.
        folder: The SavedModel folder of the export (created).
        samples: A few uint8 images `[N, H, W, C]` for the warm-up requests.
        version: The TF Serving version number (a positive integer).

    Returns:
        The version folder.

    Raises:
        ValueError: A version that is not a positive integer.

    Example:

    ```python
    write_savedmodel(model, spec, "out/savedmodel", images[:4], version=3)
    ```
    """
    if not isinstance(version, int) or version <= 0:
        raise ValueError(f"version: expected a positive integer, got {version!r}.")
    version_dir = os.path.join(folder, spec.name, str(version))
    serving_archive(model, spec).write_out(version_dir, verbose=False)
    _set_classify_method(version_dir)
    _write_warmup(version_dir, spec.name, np.asarray(samples, np.uint8))
    return version_dir


def write_models_config(path: str, name: str, base_path: str) -> str:
    """Writes TF Serving's `--model_config_file` (text `ModelServerConfig`).

    Args:
        path: The file to write.
        name: The model name clients use.
        base_path: The folder holding the numbered versions (absolute, as
            the server will see it).

    Returns:
        `path`.
    """
    text = (
        "model_config_list {\n"
        "  config {\n"
        f"    name: \"{name}\"\n"
        f"    base_path: \"{base_path}\"\n"
        "    model_platform: \"tensorflow\"\n"
        "  }\n"
        "}\n"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def savedmodel_runner(version_dir: str) -> Callable[[np.ndarray], np.ndarray]:
    """Loads the SavedModel; returns `images -> probabilities` via `serving_default`."""
    loaded = tf.saved_model.load(version_dir)
    fn = loaded.signatures["serving_default"]

    def run(images: np.ndarray) -> np.ndarray:
        return fn(**{INPUT_IMAGES: tf.constant(images, tf.uint8)})[OUTPUT_PROBABILITIES].numpy()

    run.loaded = loaded  # keeps the variables alive
    return run


def classify_examples(version_dir: str, encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Calls the `classify` signature on encoded images; returns `(classes, scores)`."""
    loaded = tf.saved_model.load(version_dir)
    examples = []
    for data in encoded:
        example = tf.train.Example()
        example.features.feature[FEATURE_IMAGE].bytes_list.value.append(data)
        examples.append(example.SerializeToString())
    out = loaded.signatures["classify"](**{INPUT_EXAMPLES: tf.constant(examples)})
    return out["classes"].numpy(), out["scores"].numpy()
