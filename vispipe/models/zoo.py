"""The registry of built-in networks and `build_model`.

Every network takes already-normalized float images and ends with a Dense
layer named "classifier" (logits) followed by a float32 softmax named
"predictions". Each network's layers have fixed names, so weights can be
matched by name across models (see `vispipe.models.transfer`).

The registry itself imports no TensorFlow: a network's module is imported
when it is first built.

Example:

```python
model = build_model("resnet18", (32, 32, 3), num_classes=10)
print([spec.name for spec in list_models()])
```
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

__all__ = [
    "NetworkSpec",
    "list_models",
    "get_spec",
    "build_model",
    "apply_network",
]


@dataclass(frozen=True)
class NetworkSpec:
    """What the zoo knows about one network.

    Attributes:
        name: Registry name, e.g. "resnet18".
        description: One line for listings.
        input_shape: Canonical (height, width, channels).
        min_size: Smallest height/width it accepts.
        reference: The paper or source the architecture follows.
        default_dropout: Dropout rate before the classifier when the caller
            asks for 0 (the architecture's own).
        builder: "module:function" of the backbone, relative to
            `vispipe.models`: `function(inputs, *, dropout, width_multiplier)`
            returns the rank-2 features fed to the classifier.
        supports_width: Whether `width_multiplier` applies.
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    min_size: int
    reference: str
    default_dropout: float = 0.0
    builder: str = field(default="", repr=False)
    supports_width: bool = False


_SPECS = (
    NetworkSpec(
        "lenet",
        "LeNet (DIGITS variant): two 5x5 conv/max-pool stages, dense 500.",
        (28, 28, 1), 16,
        "LeCun et al. 1998, Gradient-based learning applied to document "
        "recognition; NVIDIA DIGITS standard network.",
        builder="lenet:lenet_features",
    ),
    NetworkSpec(
        "alexnet",
        "AlexNet, one-tower Caffe variant (no groups), LRN, dropout 0.5.",
        (227, 227, 3), 67,
        "Krizhevsky et al. 2012, ImageNet classification with deep "
        "convolutional neural networks; Caffe bvlc_alexnet.",
        default_dropout=0.5,
        builder="alexnet:alexnet_features",
    ),
    NetworkSpec(
        "vgg16",
        "VGG-16 (configuration D), dropout 0.5 after fc1 and fc2.",
        (224, 224, 3), 32,
        "Simonyan & Zisserman 2014, Very deep convolutional networks for "
        "large-scale image recognition.",
        default_dropout=0.5,
        builder="vgg:vgg16_features",
    ),
    NetworkSpec(
        "googlenet",
        "GoogLeNet / Inception v1 without auxiliary heads, dropout 0.4.",
        (224, 224, 3), 32,
        "Szegedy et al. 2014, Going deeper with convolutions.",
        default_dropout=0.4,
        builder="googlenet:googlenet_features",
    ),
    NetworkSpec(
        "resnet20",
        "CIFAR ResNet-20 (16/32/64 filters, 0.27M parameters), for small images.",
        (32, 32, 3), 8,
        "He et al. 2015, Deep residual learning for image recognition, "
        "section 4.2 (CIFAR-10).",
        builder="resnet:resnet20_features",
    ),
    NetworkSpec(
        "resnet18",
        "ResNet-18 (basic blocks); CIFAR stem at <= 64 px.",
        (224, 224, 3), 8,
        "He et al. 2015, Deep residual learning for image recognition.",
        builder="resnet:resnet18_features",
    ),
    NetworkSpec(
        "resnet34",
        "ResNet-34 (basic blocks); CIFAR stem at <= 64 px.",
        (224, 224, 3), 8,
        "He et al. 2015, Deep residual learning for image recognition.",
        builder="resnet:resnet34_features",
    ),
    NetworkSpec(
        "resnet50",
        "ResNet-50 (bottleneck blocks, v1.5); CIFAR stem at <= 64 px.",
        (224, 224, 3), 8,
        "He et al. 2015, Deep residual learning for image recognition.",
        builder="resnet:resnet50_features",
    ),
    NetworkSpec(
        "mobilenet_v2",
        "MobileNetV2 (keras.applications), width multiplier supported.",
        (224, 224, 3), 32,
        "Sandler et al. 2018, MobileNetV2: inverted residuals and linear "
        "bottlenecks.",
        builder="mobilenet:mobilenet_v2_features",
        supports_width=True,
    ),
    NetworkSpec(
        "efficientnet_b0",
        "EfficientNet-B0 (as keras.applications, without its rescaling).",
        (224, 224, 3), 32,
        "Tan & Le 2019, EfficientNet: rethinking model scaling for "
        "convolutional neural networks.",
        default_dropout=0.2,
        builder="efficientnet:efficientnet_b0_features",
    ),
)
_BY_NAME = {spec.name: spec for spec in _SPECS}


def list_models() -> list[NetworkSpec]:
    """Returns the specs of all built-in networks, in registry order.

    Example:

    ```python
    for spec in list_models():
        print(spec.name, spec.input_shape)
    ```
    """
    return list(_SPECS)


def get_spec(name: str) -> NetworkSpec:
    """Returns the spec of network `name`.

    Raises:
        ValueError: `name` is not a built-in network; the message lists them.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"Unknown network {name!r}; available: {', '.join(_BY_NAME)}."
        ) from None


def apply_network(
    name: str,
    inputs,
    num_classes: int,
    *,
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    imagenet: bool = False,
):
    """Applies zoo network `name` to the Keras tensor `inputs`.

    Used to build a network on top of other layers (e.g. preprocessing)
    without nesting a model. Arguments are as for `build_model`.

    Returns:
        The float32 probabilities tensor, shape (batch, num_classes).
    """
    from vispipe.models.layers import classifier_head

    spec = get_spec(name)
    _check_arguments(spec, tuple(inputs.shape[1:]), num_classes, dropout,
                     width_multiplier)
    rate = dropout or spec.default_dropout
    if imagenet:
        features = _imagenet_features(name, inputs, width_multiplier)
    else:
        module_name, function_name = spec.builder.split(":")
        module = importlib.import_module(f"vispipe.models.{module_name}")
        features = getattr(module, function_name)(
            inputs, dropout=rate, width_multiplier=width_multiplier
        )
    return classifier_head(features, num_classes, rate)


def _imagenet_features(name: str, inputs, width_multiplier: float):
    """The backbone in the layout of its published ImageNet weights file."""
    from vispipe.models.imagenet import IMAGENET_MIN_SIZE, imagenet_features
    from vispipe.models.imagenet_files import published_weights

    height, width = inputs.shape[1:3]
    published_weights(name, width_multiplier, (height, width))  # Published at all?
    if min(height, width) < IMAGENET_MIN_SIZE:
        raise ValueError(
            f"{name} with ImageNet weights needs images of at least {IMAGENET_MIN_SIZE}x"
            f"{IMAGENET_MIN_SIZE} pixels, got {height}x{width}."
        )
    if inputs.shape[-1] != 3:
        raise ValueError(
            f"{name} with ImageNet weights takes 3-channel images, got {inputs.shape[-1]}."
        )
    return imagenet_features(name, inputs, width_multiplier)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    imagenet: bool = False,
) -> keras.Model:
    """Builds zoo network `name` for normalized float images.

    Small inputs are supported where the architecture allows: feature maps
    end in global average pooling (AlexNet and VGG-16 flatten, as in the
    papers, only when the last map has the canonical 6x6 / 7x7 size), and
    ResNets on images of at most 64 px use the CIFAR stem (3x3 conv, stride
    1, no max-pool) of He et al. section 4.2.

    Args:
        name: A registry name (see `list_models`).
        input_shape: (height, width, channels).
        num_classes: Number of classes, at least 2.
        dropout: Rate of the dropout before the classifier; 0 keeps the
            architecture's own (`NetworkSpec.default_dropout`: alexnet and
            vgg16 0.5, also after their first fully connected layer;
            googlenet 0.4; efficientnet_b0 0.2;
            none for the others).
        width_multiplier: Channel multiplier (mobilenet_v2 only).
        imagenet: Build the backbone in the layout of the network's
            published ImageNet weights file (see `vispipe.models.imagenet`):
            inputs preprocessed as those weights expect, at least 32 px,
            three channels. Weights stay random until loaded.

    Returns:
        A `keras.Model` named `name` mapping images to float32
        probabilities; its last layers are "classifier" (Dense logits) and
        "predictions" (softmax).

    Raises:
        ValueError: Unknown name, input smaller than the network's
            `min_size`, fewer than 2 classes, an argument out of range, or
            `imagenet` for a network without published weights (the
            message names those with).

    Example:

    ```python
    model = build_model("lenet", (28, 28, 1), num_classes=10)
    ```
    """
    import keras

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    outputs = apply_network(name, inputs, num_classes, dropout=dropout,
                            width_multiplier=width_multiplier, imagenet=imagenet)
    return keras.Model(inputs, outputs, name=name)


def _check_arguments(
    spec: NetworkSpec,
    input_shape: tuple,
    num_classes: int,
    dropout: float,
    width_multiplier: float,
) -> None:
    if len(input_shape) != 3 or any(d is None for d in input_shape):
        raise ValueError(
            f"{spec.name}: input_shape must be (height, width, channels) "
            f"with known sizes, got {input_shape}."
        )
    height, width, _ = input_shape
    if min(height, width) < spec.min_size:
        raise ValueError(
            f"{spec.name} needs images of at least {spec.min_size}x"
            f"{spec.min_size} pixels, got {height}x{width}."
        )
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(
            f"{spec.name}: num_classes must be an integer >= 2, "
            f"got {num_classes!r}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if width_multiplier <= 0:
        raise ValueError(
            f"width_multiplier must be > 0, got {width_multiplier}."
        )
    if width_multiplier != 1.0 and not spec.supports_width:
        raise ValueError(
            f"{spec.name} has no width multiplier (only mobilenet_v2 has); "
            f"got width_multiplier={width_multiplier}."
        )
