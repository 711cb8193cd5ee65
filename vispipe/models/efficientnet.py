"""EfficientNet-B0, layer for layer as keras.applications.EfficientNetB0.

Written out here because the keras.applications model starts with
Rescaling and Normalization layers, and vispipe normalizes in its own
`Preprocess` layer. Everything else matches keras: MBConv blocks with
squeeze-and-excitation and stochastic depth (drop-connect rate 0.2), swish,
the 1280-channel top convolution, BN epsilon 1e-3, the same layer names.
Parameters at 224x224x3 and 1000 classes: 5,330,564 (keras: 5,330,571, the
7 extra being its Normalization layer's mean, variance and count).
"""

from __future__ import annotations

from keras import layers

__all__ = ["efficientnet_b0_features"]

# (kernel, repeats, filters in, filters out, expand ratio, stride); SE 0.25.
_BLOCKS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
_SE_RATIO = 0.25
_DROP_CONNECT_RATE = 0.2
# keras.applications' conv initializer (He-style, fan-out, truncated normal).
_CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}


def _mbconv(x, name: str, filters_in: int, filters_out: int, kernel: int,
            strides: int, expand_ratio: int, drop_rate: float):
    filters = filters_in * expand_ratio
    inputs = x
    if expand_ratio != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                          kernel_initializer=_CONV_INIT,
                          name=f"{name}expand_conv")(x)
        x = layers.BatchNormalization(name=f"{name}expand_bn")(x)
        x = layers.Activation("swish", name=f"{name}expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel, strides=strides, padding="same",
                               use_bias=False, depthwise_initializer=_CONV_INIT,
                               name=f"{name}dwconv")(x)
    x = layers.BatchNormalization(name=f"{name}bn")(x)
    x = layers.Activation("swish", name=f"{name}activation")(x)

    filters_se = max(1, int(filters_in * _SE_RATIO))
    se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}se_squeeze")(x)
    se = layers.Conv2D(filters_se, 1, activation="swish",
                       kernel_initializer=_CONV_INIT, name=f"{name}se_reduce")(se)
    se = layers.Conv2D(filters, 1, activation="sigmoid",
                       kernel_initializer=_CONV_INIT, name=f"{name}se_expand")(se)
    x = layers.Multiply(name=f"{name}se_excite")([x, se])

    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=_CONV_INIT, name=f"{name}project_conv")(x)
    x = layers.BatchNormalization(name=f"{name}project_bn")(x)
    if strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                               name=f"{name}drop")(x)
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def efficientnet_b0_features(inputs, *, dropout: float, width_multiplier: float):
    """EfficientNet-B0 up to the global average pooling.

    Args:
        inputs: Normalized images (batch, height, width, channels).
        dropout: Unused inside the backbone (the head applies it).
        width_multiplier: Unused (always 1).

    Returns:
        The (batch, 1280) pooled features.
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False,
                      kernel_initializer=_CONV_INIT, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_activation")(x)

    total = sum(block[1] for block in _BLOCKS)
    index = 0
    for stage, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(_BLOCKS):
        for repeat in range(repeats):
            x = _mbconv(
                x,
                name=f"block{stage + 1}{chr(97 + repeat)}_",
                filters_in=f_in if repeat == 0 else f_out,
                filters_out=f_out,
                kernel=kernel,
                strides=stride if repeat == 0 else 1,
                expand_ratio=expand,
                drop_rate=_DROP_CONNECT_RATE * index / total,
            )
            index += 1

    x = layers.Conv2D(1280, 1, padding="same", use_bias=False,
                      kernel_initializer=_CONV_INIT, name="top_conv")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    x = layers.Activation("swish", name="top_activation")(x)
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)
