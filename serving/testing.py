"""Tiny SavedModels in TF Serving layout, for tests and demos of the server.

```python
path = write_test_model("/tmp/models/toy", version=1)   # /tmp/models/toy/1/saved_model.pb
```
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

__all__ = ["write_test_model", "write_broken_version", "encode_png"]


class _Toy(tf.Module):
    """uint8 images -> softmax(flatten(image / 255) @ w + b); `version` decides the top class of a blank image."""

    def __init__(self, version: int, num_classes: int, shape: tuple[int, int, int], labels: list[str]):
        super().__init__()
        height, width, channels = shape
        rng = np.random.default_rng(0)
        self.shape = shape
        self.w = tf.Variable(rng.normal(size=(height * width * channels, num_classes)).astype("float32"))
        self.b = tf.Variable(5.0 * np.eye(num_classes, dtype="float32")[version % num_classes])
        self.labels = tf.constant(labels)

    def _probabilities(self, images: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(tf.cast(images, tf.float32) / 255.0, [tf.shape(images)[0], -1])
        return tf.nn.softmax(flat @ self.w + self.b)


def _signatures(model: _Toy) -> dict:
    height, width, channels = model.shape

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")])
    def serving_default(images):
        probabilities = model._probabilities(images)
        return {"probabilities": probabilities, "label": tf.gather(model.labels, tf.argmax(probabilities, axis=1))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        features = tf.io.parse_example(inputs, {"image": tf.io.FixedLenFeature([], tf.string)})

        def decode(data):
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
            image = tf.image.resize(image, (height, width))
            return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

        images = tf.map_fn(decode, features["image"], fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))
        scores = model._probabilities(images)
        classes = tf.tile(model.labels[None], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    @tf.function(
        input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"), tf.TensorSpec([None, 2], tf.float32, name="b")]
    )
    def pair(a, b):
        return {"sum": a + b, "product": a * b}

    return {"serving_default": serving_default, "classify": classify, "pair": pair}


def _set_method_name(version_path: str, signature: str, method: str) -> None:
    # tf.saved_model.save marks every signature "predict"; TF Serving's Classify API
    # needs the classify one marked as such.
    pb = os.path.join(version_path, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        proto.ParseFromString(f.read())
    proto.meta_graphs[0].signature_def[signature].method_name = method
    with open(pb, "wb") as f:
        f.write(proto.SerializeToString())


def write_test_model(
    base_path: str,
    version: int,
    num_classes: int = 3,
    shape: tuple[int, int, int] = (4, 4, 1),
    labels: list[str] | None = None,
    folder: str | None = None,
) -> str:
    """Writes `<base_path>/<folder>/` atomically: a toy classifier with TF Serving signatures.

    Signatures: serving_default (images uint8 [B,H,W,C] -> probabilities [B,K], label [B]),
    classify (serialized tf.Examples with an encoded "image" -> classes, scores),
    pair (a, b float32 [B,2] -> sum, product). A blank image's top class is `version % num_classes`.
    Labels go to assets/labels.txt. `folder` defaults to the version number; TF Serving also
    reads zero-padded names (`00000123` is version 123).

    Returns:
        The version folder.

    Example:
    >>> write_test_model(str(tmp_path / "toy"), 1)  # doctest: +SKIP
    '/tmp/.../toy/1'
    """
    labels = labels or [f"class_{i}" for i in range(num_classes)]
    os.makedirs(base_path, exist_ok=True)
    final = os.path.join(base_path, folder or str(version))
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=base_path)
    model = _Toy(version, num_classes, shape, labels)
    tf.saved_model.save(model, staging, signatures=_signatures(model))
    _set_method_name(staging, "classify", "tensorflow/serving/classify")
    os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
    with open(os.path.join(staging, "assets", "labels.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    return final


def write_broken_version(base_path: str, version: int) -> str:
    """Writes a version folder whose saved_model.pb is garbage (it must fail to load)."""
    path = os.path.join(base_path, str(version))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel")
    return path


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, C] image."""
    return tf.io.encode_png(tf.convert_to_tensor(image, tf.uint8)).numpy()
