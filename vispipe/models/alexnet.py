"""AlexNet, the one-tower Caffe variant (bvlc_alexnet without groups).

conv 11x11/4 x96 -> LRN -> max-pool -> conv 5x5 x256 -> LRN -> max-pool ->
conv 3x3 x384 -> conv 3x3 x384 -> conv 3x3 x256 -> max-pool -> fc6 4096 ->
fc7 4096, with dropout after fc6 and fc7. Without the two-GPU groups the
convolutions hold more weights: 62.38M parameters at 227x227x3 and 1000
classes (the paper's grouped network: 60M).

pool5 is flattened when it is 6x6 (227x227 inputs) and globally averaged
otherwise, so other input sizes down to 67x67 work.
"""

from __future__ import annotations

from keras import layers

from vispipe.models.layers import LocalResponseNormalization, fully_connected_top

__all__ = ["alexnet_features"]


def alexnet_features(inputs, *, dropout: float, width_multiplier: float):
    """AlexNet up to fc7.

    Args:
        inputs: Normalized images (batch, height, width, channels).
        dropout: Rate of the dropout after fc6 (the head applies the one
            after fc7).
        width_multiplier: Unused (always 1).

    Returns:
        The (batch, 4096) fc7 features.
    """
    del width_multiplier  # AlexNet has no width multiplier.
    x = layers.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(inputs)
    x = LocalResponseNormalization(name="norm1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="conv2")(x)
    x = LocalResponseNormalization(name="norm2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    return fully_connected_top(x, 6, ("fc6", "fc7"), dropout)
