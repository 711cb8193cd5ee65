"""VGG-16 (configuration D of Simonyan & Zisserman).

Thirteen 3x3 convolutions in five blocks, each ending in a 2x2 max-pool,
then fc1 and fc2 (4096 units) with dropout after each: 138,357,544
parameters at 224x224x3 and 1000 classes. The last feature map is flattened
when it is 7x7 (224x224 inputs) and globally averaged otherwise (the paper's
dense evaluation averages class scores spatially), so inputs down to 32x32
work. Layer names follow keras.applications.VGG16.
"""

from __future__ import annotations

from keras import layers

from vispipe.models.layers import fully_connected_top

__all__ = ["vgg16_conv_blocks", "vgg16_features"]

_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_conv_blocks(inputs):
    """The thirteen convolutions and five max-pools: the last (h, w, 512) map.

    These are the layers (and names) of the published "no top" ImageNet file.
    """
    x = inputs
    for block, (filters, convs) in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu",
                name=f"block{block}_conv{conv}",
            )(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return x


def vgg16_features(inputs, *, dropout: float, width_multiplier: float):
    """VGG-16 up to fc2.

    Args:
        inputs: Normalized images (batch, height, width, channels).
        dropout: Rate of the dropout after fc1 (the head applies the one
            after fc2).
        width_multiplier: Unused (always 1).

    Returns:
        The (batch, 4096) fc2 features.
    """
    del width_multiplier  # VGG has no width multiplier.
    return fully_connected_top(vgg16_conv_blocks(inputs), 7, ("fc1", "fc2"), dropout)
