"""GoogLeNet (Inception v1) as in the paper, without the auxiliary heads.

Stem (7x7/2 conv, max-pool, LRN, 1x1 and 3x3 convs, LRN, max-pool), nine
Inception modules with the paper's Table 1 widths (5x5 convolutions in the
5x5 branch), global average pooling. Convolutions have biases and ReLU, no
batch normalization, as in the paper. "same" padding and a final global
pooling let any input of at least 32x32 through.
"""

from __future__ import annotations

from keras import layers

from vispipe.models.layers import LocalResponseNormalization

__all__ = ["googlenet_features"]

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection); None = max-pool.
_STAGES = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("pool3", None),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("pool4", None),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)


def _conv(x, filters: int, size: int, name: str, strides: int = 1):
    return layers.Conv2D(filters, size, strides=strides, padding="same",
                         activation="relu", name=name)(x)


def _inception(x, name: str, widths: tuple[int, ...]):
    f1, f3r, f3, f5r, f5, fp = widths
    b1 = _conv(x, f1, 1, f"{name}_1x1")
    b3 = _conv(_conv(x, f3r, 1, f"{name}_3x3_reduce"), f3, 3, f"{name}_3x3")
    b5 = _conv(_conv(x, f5r, 1, f"{name}_5x5_reduce"), f5, 5, f"{name}_5x5")
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    bp = _conv(bp, fp, 1, f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_output")([b1, b3, b5, bp])


def googlenet_features(inputs, *, dropout: float, width_multiplier: float):
    """GoogLeNet up to the global average pooling.

    Args:
        inputs: Normalized images (batch, height, width, channels).
        dropout: Unused inside the backbone (the head applies it).
        width_multiplier: Unused (always 1).

    Returns:
        The (batch, 1024) pooled features.
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    x = _conv(inputs, 64, 7, "conv1_7x7", strides=2)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = LocalResponseNormalization(name="norm1")(x)
    x = _conv(x, 64, 1, "conv2_3x3_reduce")
    x = _conv(x, 192, 3, "conv2_3x3")
    x = LocalResponseNormalization(name="norm2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    for name, widths in _STAGES:
        if widths is None:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)
        else:
            x = _inception(x, f"inception_{name}", widths)
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)
