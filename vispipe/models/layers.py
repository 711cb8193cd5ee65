"""Layers the vispipe networks share: input preprocessing, LRN and the head.

`Preprocess` bakes the dataset normalization into the model, so a saved
`.keras` file takes images on the 0-255 scale, exactly as they are stored.
`LocalResponseNormalization` is Caffe's cross-channel LRN (AlexNet,
GoogLeNet). `classifier_head` appends the "classifier" logits and the float32
"predictions" softmax every vispipe network ends with.

Example:

```python
x = keras.Input((28, 28, 1))
y = Preprocess("standardize", mean=[33.3], std=[78.6])(x)
```
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import layers, ops

from vispipe.configs import PREPROCESS_MODES

__all__ = [
    "PREPROCESS_MODES",
    "CAFFE_BGR_MEAN",
    "Preprocess",
    "LocalResponseNormalization",
    "classifier_head",
    "fully_connected_top",
]

# keras.applications.imagenet_utils' "caffe" mode: BGR channel means.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="vispipe")
class Preprocess(layers.Layer):
    """Normalizes 0-255 images: `(x - mean) * scale`.

    Modes: "standardize" (per-channel mean, scale 1/std), "pixel"
    (per-channel mean, scale 1/255), "image" (mean image of shape
    (H, W, C), scale 1/255), "scale" (x / 255) and "none" (x unchanged).
    Two more reproduce `keras.applications`' `preprocess_input` for
    pretrained weights: "caffe" (RGB to BGR, minus the ImageNet BGR means:
    VGG-16, ResNet-50) and "tf" (to [-1, 1]: MobileNetV2).

    The arithmetic runs in float32 whatever the dtype policy; the output is
    cast to the layer's compute dtype (float16 under mixed precision). The
    mean image is a non-trainable weight, so a saved model carries it; the
    config stores only its shape. A channel whose std is 0 is left unscaled.

    Args:
        mode: One of `PREPROCESS_MODES`.
        mean: Per-channel means ("standardize", "pixel") or the mean image
            ("image", nested lists or an array of shape (H, W, C)).
        std: Per-channel standard deviations ("standardize").
        mean_shape: Shape of the mean image when `mean` is not given (a
            model being loaded, whose weights fill it in).
        to_rgb: Repeat a single-channel input three times first, so
            grayscale images feed weights trained on colour.

    Example:

    ```python
    layer = Preprocess("pixel", mean=[125.3, 123.0, 113.9])
    y = layer(np.full((1, 32, 32, 3), 255.0, "float32"))
    ```
    """

    def __init__(
        self,
        mode: str = "none",
        mean: Sequence[float] | np.ndarray | None = None,
        std: Sequence[float] | None = None,
        mean_shape: Sequence[int] | None = None,
        to_rgb: bool = False,
        **kwargs: Any,
    ) -> None:
        # Inputs and the mean image must not be cast to float16 before the
        # subtraction; `call` casts the result instead.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(
                f"Preprocess mode must be one of {PREPROCESS_MODES}, "
                f"got {mode!r}."
            )
        self.mode = mode
        self.to_rgb = bool(to_rgb)
        self.mean = None
        self.std = None
        self.mean_image = None
        if mode in ("standardize", "pixel"):
            self.mean = _channel_list(mode, "mean", mean)
        if mode == "standardize":
            self.std = _channel_list(mode, "std", std)
            if len(self.std) != len(self.mean):
                raise ValueError(
                    f"Preprocess: mean has {len(self.mean)} channels but std "
                    f"has {len(self.std)}."
                )
        if mode == "image":
            self.mean_image = self._mean_image_weight(mean, mean_shape)

    def _mean_image_weight(self, mean, mean_shape) -> keras.Variable:
        if mean is not None:
            value = np.asarray(mean, dtype="float32")
        elif mean_shape is not None:
            value = np.zeros(tuple(mean_shape), dtype="float32")
        else:
            raise ValueError(
                "Preprocess mode 'image' needs `mean` (the mean image) or "
                "`mean_shape`; got neither."
            )
        if value.ndim != 3:
            raise ValueError(
                "Preprocess mode 'image' expects a mean image of shape "
                f"(height, width, channels), got shape {value.shape}."
            )
        return self.add_weight(
            name="mean_image",
            shape=value.shape,
            initializer=keras.initializers.Constant(value),
            dtype="float32",
            trainable=False,
        )

    def build(self, input_shape) -> None:
        channels = self._output_channels(input_shape[-1])
        if self.mode == "caffe" and channels != 3:
            raise ValueError(
                f"Preprocess mode 'caffe' needs 3-channel (RGB) images, got "
                f"{channels} channel(s); set to_rgb for grayscale."
            )
        if self.mean is not None and len(self.mean) not in (1, channels):
            raise ValueError(
                f"Preprocess: {len(self.mean)} channel means for an input "
                f"with {channels} channels."
            )
        if self.mean_image is not None:
            expected = tuple(self.mean_image.shape)
            if tuple(input_shape[-3:]) != expected:
                raise ValueError(
                    f"Preprocess: mean image has shape {expected}, input "
                    f"images have shape {tuple(input_shape[-3:])}."
                )

    def _output_channels(self, channels):
        return 3 if self.to_rgb and channels == 1 else channels

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.to_rgb and x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        if self.mode == "standardize":
            std = np.asarray(self.std, dtype="float32")
            scale = 1.0 / np.where(std > 0, std, 1.0)
            x = (x - np.asarray(self.mean, dtype="float32")) * scale
        elif self.mode == "pixel":
            x = (x - np.asarray(self.mean, dtype="float32")) / 255.0
        elif self.mode == "image":
            x = (x - self.mean_image) / 255.0
        elif self.mode == "scale":
            x = x / 255.0
        elif self.mode == "caffe":
            x = ops.flip(x, axis=-1) - np.asarray(CAFFE_BGR_MEAN, dtype="float32")
        elif self.mode == "tf":
            x = x / 127.5 - 1.0
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self._output_channels(input_shape[-1]))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("autocast", None)
        config.update({"mode": self.mode, "mean": self.mean, "std": self.std,
                       "to_rgb": self.to_rgb})
        if self.mean_image is not None:
            config["mean_shape"] = list(self.mean_image.shape)
        return config


def _channel_list(mode: str, field: str, value) -> list[float]:
    if value is None:
        raise ValueError(f"Preprocess mode {mode!r} needs `{field}`; got None.")
    values = np.asarray(value, dtype="float64").reshape(-1)
    if values.size == 0:
        raise ValueError(f"Preprocess mode {mode!r}: `{field}` is empty.")
    return [float(v) for v in values]


@keras.saving.register_keras_serializable(package="vispipe")
class LocalResponseNormalization(layers.Layer):
    """Caffe's cross-channel local response normalization.

    `x / (k + alpha / size * sum(x^2 over `size` neighbouring channels))
    ** beta`, as in AlexNet (size 5, alpha 1e-4, beta 0.75, k 1 by default).

    Args:
        size: Channels in the normalization window (odd).
        alpha: Caffe's alpha (divided by `size`, as Caffe does).
        beta: Exponent.
        k: Bias.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def call(self, inputs):
        import tensorflow as tf

        return tf.nn.local_response_normalization(
            inputs,
            depth_radius=self.size // 2,
            bias=self.k,
            alpha=self.alpha / self.size,
            beta=self.beta,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"size": self.size, "alpha": self.alpha, "beta": self.beta,
             "k": self.k}
        )
        return config


def fully_connected_top(
    x, canonical_map: int, names: tuple[str, str], dropout: float = 0.0
):
    """The AlexNet/VGG top: two 4096-unit ReLU layers on the last feature map.

    At the canonical input size the map is flattened, as in the papers (so
    parameter counts match them); at any other size it is global-average
    pooled, so the network accepts it.

    Args:
        x: The last (batch, h, w, c) feature map.
        canonical_map: h (= w) of that map at the canonical input size.
        names: Names of the two dense layers (e.g. ("fc6", "fc7")); the
            dropout between them is named after the first ("fc6" -> "drop6").
        dropout: Rate of the dropout after the first dense layer (0: none).

    Returns:
        The (batch, 4096) features.
    """
    if tuple(x.shape[1:3]) == (canonical_map, canonical_map):
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    first, second = names
    x = layers.Dense(4096, activation="relu", name=first)(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=first.replace("fc", "drop"))(x)
    return layers.Dense(4096, activation="relu", name=second)(x)


def classifier_head(features, num_classes: int, dropout: float = 0.0):
    """Appends [Dropout ->] "classifier" logits -> float32 "predictions".

    The softmax runs in float32 so mixed-precision models output float32
    probabilities.

    Args:
        features: A rank-2 feature tensor.
        num_classes: Number of classes.
        dropout: Rate of a Dropout layer before the classifier (0: none).

    Returns:
        The probabilities tensor, shape (batch, num_classes).
    """
    x = features
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)
