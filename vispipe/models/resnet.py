"""ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks).

As in He et al. 2015 with batch normalization after every convolution and
no convolution biases; ResNet-50 strides in the 3x3 convolution of a
bottleneck ("v1.5", as torchvision). Projection shortcuts (1x1 conv + BN)
where the shape changes. Trainable parameters at 224x224x3 and 1000
classes: 11,689,512 / 21,797,672 / 25,557,032.

Images of at most 64 px get the CIFAR stem of the paper's section 4.2 (one
3x3 convolution with stride 1, no max-pool) instead of the 7x7/2 convolution
and 3x3/2 max-pool, so 32x32 images keep a 4x4 map in the last stage
rather than 1x1. Layer names follow keras.applications.ResNet50.

ResNet-20 is the paper's CIFAR network (section 4.2): 6n+2 layers with n=3,
three stages of 16/32/64 filters on 32x32 images; shortcuts that change shape
are 1x1 projections (the paper's option B), giving 272,474 parameters at 10
classes. It trains on a CPU in minutes per epoch where ResNet-18 takes hours.
"""

from __future__ import annotations

from keras import layers

__all__ = [
    "CIFAR_STEM_MAX_SIZE",
    "resnet20_features",
    "resnet18_features",
    "resnet34_features",
    "resnet50_features",
]

CIFAR_STEM_MAX_SIZE = 64
_WIDTHS = (64, 128, 256, 512)


def _conv_bn(x, filters: int, size: int, strides: int, name: str):
    x = layers.Conv2D(filters, size, strides=strides, padding="same",
                      use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                     name=f"{name}_bn")(x)


def _basic_block(x, filters: int, strides: int, name: str):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_0")
    y = _conv_bn(x, filters, 3, strides, f"{name}_1")
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _bottleneck_block(x, filters: int, strides: int, name: str):
    shortcut = x
    if strides != 1 or x.shape[-1] != 4 * filters:
        shortcut = _conv_bn(x, 4 * filters, 1, strides, f"{name}_0")
    y = _conv_bn(x, filters, 1, 1, f"{name}_1")
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 3, strides, f"{name}_2")
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = _conv_bn(y, 4 * filters, 1, 1, f"{name}_3")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _resnet(inputs, block, depths: tuple[int, ...]):
    if max(inputs.shape[1:3]) <= CIFAR_STEM_MAX_SIZE:
        x = _conv_bn(inputs, 64, 3, 1, "conv1")
        x = layers.Activation("relu", name="conv1_relu")(x)
    else:
        x = _conv_bn(inputs, 64, 7, 2, "conv1")
        x = layers.Activation("relu", name="conv1_relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    for stage, (filters, depth) in enumerate(zip(_WIDTHS, depths), start=2):
        for index in range(1, depth + 1):
            strides = 2 if index == 1 and stage > 2 else 1
            x = block(x, filters, strides, f"conv{stage}_block{index}")
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def resnet20_features(inputs, *, dropout: float, width_multiplier: float):
    """CIFAR ResNet-20 up to the global average pooling: (batch, 64) features.

    Args: as `resnet18_features`.
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    x = _conv_bn(inputs, 16, 3, 1, "conv1")
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, filters in enumerate((16, 32, 64), start=2):
        for index in range(1, 4):
            strides = 2 if index == 1 and stage > 2 else 1
            x = _basic_block(x, filters, strides, f"conv{stage}_block{index}")
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def resnet18_features(inputs, *, dropout: float, width_multiplier: float):
    """ResNet-18 up to the global average pooling: (batch, 512) features.

    Args:
        inputs: Normalized images (batch, height, width, channels).
        dropout: Unused inside the backbone (the head applies it).
        width_multiplier: Unused (always 1).
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    return _resnet(inputs, _basic_block, (2, 2, 2, 2))


def resnet34_features(inputs, *, dropout: float, width_multiplier: float):
    """ResNet-34 up to the global average pooling: (batch, 512) features.

    Args: as `resnet18_features`.
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    return _resnet(inputs, _basic_block, (3, 4, 6, 3))


def resnet50_features(inputs, *, dropout: float, width_multiplier: float):
    """ResNet-50 up to the global average pooling: (batch, 2048) features.

    Args: as `resnet18_features`.
    """
    del dropout, width_multiplier  # The zoo head applies the dropout.
    return _resnet(inputs, _bottleneck_block, (3, 4, 6, 3))
