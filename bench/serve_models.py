"""The models `serve_load.py` serves: a trained LeNet and an untrained MobileNetV2, as SavedModels.

Each is saved once into a work folder (reused on later runs) as a `.keras`
file (for the `model.predict` server) and a TF Serving SavedModel base path
with version 1 (plus a staged version 2 for the hot-swap test), with the
request bodies the clients send.

Example:

```python
model = prepare_model("lenet", "/tmp/vispipe-serve-bench")
print(model.base, len(model.bodies))
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import tarfile

__all__ = ["MODELS", "BenchModel", "prepare_model"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("lenet", "mobilenet_v2")
_BODIES = 64


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A served model and what clients send it.

    Attributes:
        name: `lenet` or `mobilenet_v2` (also the served model name).
        shape: (height, width, channels) of one uint8 image.
        base: SavedModel base path holding version 1.
        keras_path: The same model as a .keras file.
        staged_v2: A copy of the SavedModel to drop in as version 2.
        bodies: TF Serving REST predict bodies of one image each.
    """

    name: str
    shape: tuple[int, int, int]
    base: str
    keras_path: str
    staged_v2: str
    bodies: list[bytes]


def _shared_datasets() -> str:
    return os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(os.path.dirname(REPO), "shared", "datasets")


def _mnist_subset(dest: str, per_class: int) -> str:
    """Unpacks `per_class` train and test PNGs per digit; returns the mnist-png folder."""
    archive = os.path.join(_shared_datasets(), "mnist-png.tar.gz")
    if not os.path.isfile(archive):
        sys.exit(f"serve_load: MNIST archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and taken.get("/".join(parts[:3]), 0) < per_class:
                taken["/".join(parts[:3])] = taken.get("/".join(parts[:3]), 0) + 1
                members.append(member)
        tar.extractall(dest, members=members, filter="data")
    return os.path.join(dest, "mnist-png")


def _load_split(root: str, split: str):
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for digit in range(10):
        folder = os.path.join(root, split, str(digit))
        for name in sorted(os.listdir(folder)):
            images.append(np.asarray(Image.open(os.path.join(folder, name)).convert("L"))[..., None])
            labels.append(digit)
    return np.stack(images).astype("uint8"), np.array(labels)


def _export(model, path: str, shape: tuple[int, int, int]) -> None:
    """SavedModel in TF Serving layout: serving_default (uint8 images) and classify (tf.Examples)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    labels = tf.constant([str(d) for d in range(10)])
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.uint8, name="images")])
    def serving_default(images):
        probabilities = module.model(tf.cast(images, tf.float32), training=False)
        return {"probabilities": probabilities, "label": tf.gather(labels, tf.argmax(probabilities, axis=1))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        encoded = tf.io.parse_example(inputs, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
        images = tf.map_fn(
            lambda data: tf.reshape(tf.io.decode_png(data, channels=shape[2]), shape),
            encoded,
            fn_output_signature=tf.TensorSpec(shape, tf.uint8),
        )
        scores = module.model(tf.cast(images, tf.float32), training=False)
        return {"classes": tf.tile(labels[None], [tf.shape(scores)[0], 1]), "scores": scores}

    staging = path + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(module, staging, signatures={"serving_default": serving_default, "classify": classify})
    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(staging, "saved_model.pb")
    with open(pb, "rb") as f:
        proto.ParseFromString(f.read())
    proto.meta_graphs[0].signature_def["classify"].method_name = "tensorflow/serving/classify"
    with open(pb, "wb") as f:
        f.write(proto.SerializeToString())
    os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
    with open(os.path.join(staging, "assets", "labels.txt"), "w") as f:
        f.write("\n".join(str(d) for d in range(10)) + "\n")
    os.replace(staging, path)


def _lenet(x, y):
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Rescaling(1 / 255.0),
            layers.Conv2D(20, 5, name="conv1"),
            layers.MaxPooling2D(2),
            layers.Conv2D(50, 5, name="conv2"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(500, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    # Seeded, at a rate that does not diverge: a LeNet with NaN weights answers NaN, which
    # the baselines' JSON encoders refuse (every request an error).
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, batch_size=64, epochs=3, verbose=0)
    return model


def _mobilenet_v2():
    import keras

    inputs = keras.Input((224, 224, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    network = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, classes=10)
    return keras.Model(inputs, network(scaled))


def _cifar_photos(count: int) -> list:
    """`count` CIFAR-10 test images upscaled to 224x224 (uint8 arrays)."""
    import io

    import numpy as np
    from PIL import Image

    archive = os.path.join(_shared_datasets(), "cifar10-jpg.tar.gz")
    if not os.path.isfile(archive):
        sys.exit(f"serve_load: CIFAR-10 archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    images = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and "/test/" in member.name and len(images) < count:
                small = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                images.append(np.asarray(small.resize((224, 224), Image.BICUBIC)))
    return images


def prepare_model(name: str, work: str) -> BenchModel:
    """Builds (once, cached in `work`) the model `name` and the request bodies.

    Args:
        name: One of `MODELS`.
        work: Cache folder.

    Returns:
        The `BenchModel`.
    """
    folder = os.path.join(work, name)
    base = os.path.join(folder, "models", name)
    keras_path = os.path.join(folder, f"{name}.keras")
    staged_v2 = os.path.join(folder, "staged", "2")
    shape = (28, 28, 1) if name == "lenet" else (224, 224, 3)
    os.makedirs(folder, exist_ok=True)
    if name == "lenet":
        mnist = os.path.join(folder, "mnist-png")
        if not os.path.isdir(mnist):
            _mnist_subset(folder, per_class=300)
        test_x, _ = _load_split(mnist, "test")
        rng = random.Random(0)
        images = [test_x[i] for i in rng.sample(range(len(test_x)), _BODIES)]
    else:
        images = _cifar_photos(_BODIES)
    if not os.path.isfile(os.path.join(base, "1", "saved_model.pb")):
        model = _lenet(*_load_split(mnist, "train")) if name == "lenet" else _mobilenet_v2()
        model.save(keras_path)
        os.makedirs(base, exist_ok=True)
        _export(model, os.path.join(base, "1"), shape)
        os.makedirs(os.path.dirname(staged_v2), exist_ok=True)
        _export(model, staged_v2, shape)
    bodies = [json.dumps({"instances": [image.tolist()]}).encode() for image in images]
    return BenchModel(name, shape, base, keras_path, staged_v2, bodies)
