"""MobileNetV2 from keras.applications, on vispipe's own input tensor.

The keras.applications layers are built directly into the caller's graph
(no nested model), without their top; vispipe adds global average pooling
and its head. At width 1.0, 224x224x3 and 1000 classes the model has
3,538,984 parameters, as keras.applications.MobileNetV2.
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["mobilenet_v2_features"]


def mobilenet_v2_features(inputs, *, dropout: float, width_multiplier: float):
    """MobileNetV2 up to the global average pooling.

    Args:
        inputs: Normalized images (batch, height, width, channels), at
            least 32x32.
        dropout: Unused inside the backbone (the head applies it).
        width_multiplier: keras' `alpha`: scales every layer's channels.

    Returns:
        The (batch, 1280 * max(1, width_multiplier)) pooled features.
    """
    del dropout  # The zoo head applies the dropout.
    backbone = keras.applications.MobileNetV2(
        input_tensor=inputs,
        alpha=width_multiplier,
        include_top=False,
        weights=None,
    )
    return layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
