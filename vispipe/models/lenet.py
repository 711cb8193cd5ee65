"""LeNet as in NVIDIA DIGITS (Caffe's MNIST LeNet).

conv 5x5x20 -> max-pool 2 -> conv 5x5x50 -> max-pool 2 -> dense 500 relu.
Convolutions are unpadded, so inputs must be at least 16x16.
"""

from __future__ import annotations

from keras import layers

__all__ = ["lenet_features"]


def lenet_features(inputs, *, dropout: float, width_multiplier: float):
    """LeNet up to its 500-unit hidden layer.

    Args:
        inputs: Normalized images (batch, height, width, channels).
        dropout: Unused inside the backbone (the head applies it).
        width_multiplier: Unused (always 1).

    Returns:
        The (batch, 500) features.
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    x = layers.Conv2D(20, 5, name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(50, 5, name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(500, activation="relu", name="fc1")(x)
