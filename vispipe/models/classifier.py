"""The trainable model of a run: preprocessing + network + probabilities.

`build_classifier` puts a `Preprocess` layer holding the dataset's
statistics in front of a zoo or custom network, so the model takes images
exactly as the dataset stores them (float32 on the 0-255 scale) and outputs
float32 class probabilities.

Example:

```python
info = read_dataset_info("datasets/mnist")
model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
```
"""

from __future__ import annotations

import logging
import os
from typing import Any

import keras
import numpy as np

from vispipe.configs import NORMALIZATIONS, ModelConfig
from vispipe.data.format import MEAN_FILE, DatasetInfo
from vispipe.models.custom import load_custom_network
from vispipe.models.imagenet import imagenet_preprocess, load_imagenet_weights, read_weights_file
from vispipe.models.imagenet_files import locate_weights, published_weights
from vispipe.models.layers import Preprocess
from vispipe.models.transfer import load_pretrained
from vispipe.models.zoo import apply_network

__all__ = ["IMAGENET", "preprocess_config", "build_classifier", "imagenet_weights_file"]

# `ModelConfig.weights` value that starts from keras.applications' weights.
IMAGENET = "imagenet"

_log = logging.getLogger(__name__)


def preprocess_config(info: DatasetInfo, normalization: str) -> dict[str, Any]:
    """The preprocessing of a dataset, as `Preprocess` arguments.

    Args:
        info: The dataset.
        normalization: One of `vispipe.configs.NORMALIZATIONS`.

    Returns:
        `{"mode", "mean", "std"}`: `mean` is the per-channel mean
        ("standardize", "pixel"), the mean image as nested lists of shape
        (H, W, C) ("image"), else None; `std` the per-channel standard
        deviation for "standardize", else None. Inputs are on the 0-255
        scale and the output is `(x - mean) / std` for "standardize",
        `(x - mean) / 255` for "pixel" and "image", `x / 255` for "scale"
        and `x` for "none" (a std of 0 counts as 1).

    Raises:
        ValueError: Unknown normalization, or a mean image whose shape is
            not the dataset's image shape.
        FileNotFoundError: "image" and the dataset has no mean.npy.

    Example:

    ```python
    layer = Preprocess(**preprocess_config(info, "pixel"))
    ```
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got "
            f"{normalization!r}."
        )
    mean = std = None
    if normalization in ("standardize", "pixel"):
        mean = [float(v) for v in info.mean_pixel]
    if normalization == "standardize":
        std = [float(v) for v in info.std_pixel]
    if normalization == "image":
        mean_path = os.path.join(info.path, MEAN_FILE)
        if not os.path.isfile(mean_path):
            raise FileNotFoundError(
                f"normalization 'image' needs the mean image {mean_path}, "
                "which does not exist."
            )
        image = np.load(mean_path).astype("float32")
        if image.shape != tuple(info.image_shape):
            raise ValueError(
                f"{mean_path}: mean image has shape {image.shape}, the "
                f"dataset's images are {tuple(info.image_shape)}."
            )
        mean = image.tolist()
    return {"mode": normalization, "mean": mean, "std": std}


def build_classifier(
    model_cfg: ModelConfig, info: DatasetInfo, normalization: str
) -> keras.Model:
    """Builds the model a run trains.

    Input "image" (float32, the dataset's image shape, 0-255) ->
    `Preprocess` named "preprocess" -> the network (a zoo network, or
    `model_cfg.custom_path` when `model_cfg.name == "custom"`) -> float32
    probabilities. With `model_cfg.weights`, matching weights are then
    loaded (see `vispipe.models.transfer.load_pretrained`; the report is
    logged). With `weights: imagenet` the network is built in the layout of
    its published ImageNet weights file and loaded from it, and `Preprocess`
    applies the normalization those weights expect instead of
    `normalization` (see `vispipe.models.imagenet`).

    Args:
        model_cfg: The network settings.
        info: The dataset (shape, classes, statistics, mean image).
        normalization: One of `vispipe.configs.NORMALIZATIONS`.

    Returns:
        A `keras.Model` named `vispipe_<network>`.

    Raises:
        ValueError: Unknown network, bad sizes or settings, or pretrained
            weights that match no layer.

    Example:

    ```python
    model = build_classifier(ModelConfig(name="resnet18"), info, "pixel")
    ```
    """
    if model_cfg.weights == IMAGENET:
        return _build_imagenet_classifier(model_cfg, info)
    inputs = keras.Input(shape=info.image_shape, name="image", dtype="float32")
    x = Preprocess(**preprocess_config(info, normalization), name="preprocess")(inputs)
    if model_cfg.name == "custom":
        if not model_cfg.custom_path:
            raise ValueError(
                "model.name is 'custom' but model.custom_path is empty; set "
                "it to a .py file or a .keras model."
            )
        network = load_custom_network(
            model_cfg.custom_path, info.image_shape, info.num_classes
        )
        outputs = network(x)
    else:
        outputs = apply_network(
            model_cfg.name, x, info.num_classes,
            dropout=model_cfg.dropout,
            width_multiplier=model_cfg.width_multiplier,
        )
    model = keras.Model(inputs, outputs, name=f"vispipe_{model_cfg.name}")
    if model_cfg.weights:
        _log.info("%s", load_pretrained(model, model_cfg.weights, info.classes))
    return model


def imagenet_weights_file(model_cfg: ModelConfig, image_shape: tuple[int, int, int]) -> str:
    """The local ImageNet weights file a `weights: imagenet` model needs.

    Call it before any other work: an offline machine without the file fails
    here in one line (see `vispipe.models.imagenet_files.locate_weights`).

    Args:
        model_cfg: The network settings (`weights == "imagenet"`).
        image_shape: The dataset's (height, width, channels).

    Returns:
        The file's path (in `model_cfg.weights_dir`, `$VISPIPE_WEIGHTS_DIR`
        or the Keras cache, downloaded there if needed).

    Raises:
        ValueError: A network or width multiplier without published weights.
        WeightsUnavailableError: Not found and not downloadable.
        WeightsFileError: A cached file fails its hash check.
    """
    if model_cfg.name == "custom":
        raise ValueError(
            "model.weights 'imagenet' needs a zoo network with published weights; a custom "
            "network can start from a .keras/.weights.h5 file or an earlier run instead."
        )
    published = published_weights(model_cfg.name, model_cfg.width_multiplier,
                                  tuple(image_shape[:2]))
    return locate_weights(published, model_cfg.weights_dir)


def _build_imagenet_classifier(model_cfg: ModelConfig, info: DatasetInfo) -> keras.Model:
    """A zoo network in its published layout, preprocessed and loaded as its weights expect."""
    path = imagenet_weights_file(model_cfg, info.image_shape)
    published = published_weights(model_cfg.name, model_cfg.width_multiplier,
                                  (info.height, info.width))
    arrays = read_weights_file(path)
    inputs = keras.Input(shape=info.image_shape, name="image", dtype="float32")
    x = Preprocess(**imagenet_preprocess(published, arrays, info.channels),
                   name="preprocess")(inputs)
    outputs = apply_network(model_cfg.name, x, info.num_classes, dropout=model_cfg.dropout,
                            width_multiplier=model_cfg.width_multiplier, imagenet=True)
    model = keras.Model(inputs, outputs, name=f"vispipe_{model_cfg.name}")
    _log.info("%s", load_imagenet_weights(model, arrays, path))
    return model
