"""Zoo networks initialised from `keras.applications`' ImageNet weights.

Three things must match the published files exactly, and this module keeps
them together:

- The layout: the backbone is built with the layers, names and arithmetic of
  the `keras.applications` model the file was saved from, followed by global
  average pooling named "avg_pool" (the "no top" files hold no classifier;
  vispipe's head is new, for the dataset's classes). For vgg16 that means no
  fc1/fc2; for resnet50 keras' ResNet-50 v1 (convolution biases, stride in
  the first 1x1 convolution, the ImageNet stem at every input size) rather
  than the v1.5 network vispipe trains from scratch.
- The input: the `Preprocess` arguments that reproduce the network's
  `preprocess_input` ("caffe" for VGG-16 and ResNet-50, "tf" for
  MobileNetV2, and for EfficientNet the normalization stored in the file),
  with grayscale repeated to three channels.
- The weights: read from the legacy HDF5 layout (`layer_names`, one group per
  layer, `weight_names` in Keras' legacy order) and matched by layer name.
  Every backbone layer must be found with the right shapes before any is
  assigned, so a wrong or damaged file changes nothing.

Example:

```python
arrays = read_weights_file(path)
x = Preprocess(**imagenet_preprocess(published, arrays, channels=1))(inputs)
features = imagenet_features("resnet50", x)
...
report = load_imagenet_weights(model, arrays, path)
```
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from vispipe.models.imagenet_files import PublishedWeights, WeightsFileError
from vispipe.models.layers import Preprocess
from vispipe.models.transfer import HEAD_LAYERS, TransferReport, zero_head

__all__ = [
    "IMAGENET_MIN_SIZE",
    "imagenet_features",
    "read_weights_file",
    "imagenet_preprocess",
    "load_imagenet_weights",
]

# keras.applications' smallest input for these four networks.
IMAGENET_MIN_SIZE = 32
# keras.applications.efficientnet: the published file's Normalization layer
# holds the standard deviations as "variance"; Keras divides once more by
# their square roots when it loads ImageNet weights.
_EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)
_EPSILON = 1e-7  # keras.backend.epsilon(), Normalization's floor on the std.


def imagenet_features(name: str, inputs, width_multiplier: float = 1.0):
    """The backbone of a published weights file, up to global average pooling.

    Args:
        name: One of `vispipe.models.imagenet_files.IMAGENET_NETWORKS`.
        inputs: Preprocessed images (batch, height, width, 3), at least
            `IMAGENET_MIN_SIZE` pixels on each side.
        width_multiplier: MobileNetV2's alpha.

    Returns:
        The pooled features (batch, channels), from a layer named "avg_pool".
    """
    if name == "vgg16":
        from vispipe.models.vgg import vgg16_conv_blocks

        x = vgg16_conv_blocks(inputs)
    elif name == "resnet50":
        # Built into the caller's graph (no nested model), as mobilenet_v2.
        x = keras.applications.ResNet50(input_tensor=inputs, include_top=False,
                                        weights=None).output
    elif name == "mobilenet_v2":
        from vispipe.models.mobilenet import mobilenet_v2_features

        return mobilenet_v2_features(inputs, dropout=0.0, width_multiplier=width_multiplier)
    elif name == "efficientnet_b0":
        from vispipe.models.efficientnet import efficientnet_b0_features

        return efficientnet_b0_features(inputs, dropout=0.0, width_multiplier=1.0)
    else:
        raise ValueError(f"{name} has no published ImageNet weights layout.")
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def read_weights_file(path: str) -> dict[str, list[np.ndarray]]:
    """Every layer's arrays from a Keras legacy HDF5 weights file.

    Args:
        path: An `.h5` file as `keras.applications` publishes them (weights
            only, or a whole model with a "model_weights" group).

    Returns:
        Layer name -> its arrays, in the file's (Keras' legacy) order; layers
        without weights are left out.

    Raises:
        WeightsFileError: The file cannot be read to the end (truncated or
            corrupt) or is not a Keras weights file.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f
            if "layer_names" not in f.attrs and "model_weights" in f:
                root = f["model_weights"]
            names = _string_list(root.attrs, "layer_names")
            if not names:
                raise WeightsFileError(
                    f"{path}: not a Keras weights file (no 'layer_names' attribute)."
                )
            arrays: dict[str, list[np.ndarray]] = {}
            for name in names:
                group = root[name]
                values = [np.asarray(group[w]) for w in _string_list(group.attrs, "weight_names")]
                if values:
                    arrays[name] = values
    except WeightsFileError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise WeightsFileError(
            f"Cannot read weights file {path} ({error}); it is truncated or corrupt: "
            "delete it (a cached file is then downloaded again) or replace it."
        ) from None
    return arrays


def _string_list(attrs, name: str) -> list[str]:
    # Long lists are split over name0, name1, ... (HDF5's header size limit).
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks, index = [], 0
        while f"{name}{index}" in attrs:
            chunks.append(attrs[f"{name}{index}"])
            index += 1
    return [v.decode("utf8") if hasattr(v, "decode") else str(v)
            for chunk in chunks for v in chunk]


def imagenet_preprocess(
    published: PublishedWeights, arrays: dict[str, list[np.ndarray]], channels: int
) -> dict[str, Any]:
    """The `Preprocess` arguments the weights expect, for 0-255 images.

    Args:
        published: The weights file's description.
        arrays: Its contents (`read_weights_file`): EfficientNet's
            normalization is read from its "normalization" layer.
        channels: The dataset's channels (1 is repeated to 3).

    Returns:
        Keyword arguments of `Preprocess`: mode "caffe" (VGG-16, ResNet-50),
        "tf" (MobileNetV2), or "standardize" with the ImageNet mean and
        standard deviation on the 0-255 scale (EfficientNet: keras'
        Rescaling(1/255), Normalization and its extra 1/sqrt(std) in one).

    Raises:
        WeightsFileError: An EfficientNet file without its normalization.
        ValueError: Images that are neither grayscale nor RGB.
    """
    if channels not in (1, 3):
        raise ValueError(
            f"ImageNet weights need grayscale or RGB images; the dataset has {channels} channels."
        )
    config: dict[str, Any] = {"mode": published.preprocessing, "to_rgb": channels == 1}
    if published.preprocessing == "efficientnet":
        normalization = next((values for name, values in arrays.items()
                              if name.startswith("normalization")), None)
        if normalization is None or len(normalization) < 2:
            raise WeightsFileError(
                f"{published.file_name}: no 'normalization' layer with mean and variance; "
                "is it an EfficientNet weights file?"
            )
        mean, variance = (np.asarray(a, dtype="float64").reshape(-1) for a in normalization[:2])
        std = np.maximum(np.sqrt(variance), _EPSILON) * np.sqrt(_EFFICIENTNET_STDDEV_RGB)
        config.update(mode="standardize", mean=(255.0 * mean).tolist(),
                      std=(255.0 * std).tolist())
    return config


def load_imagenet_weights(
    model: keras.Model, arrays: dict[str, list[np.ndarray]], source: str
) -> TransferReport:
    """Assigns a weights file to the backbone of `model`, matching layers by name.

    Every layer with weights except `Preprocess` and the head must be in the
    file with the same number and shapes of arrays; all are checked before
    any is assigned.

    Args:
        model: A model built with `imagenet_features` (no nested models).
        arrays: The file's contents (`read_weights_file`).
        source: The file, for the report and errors.

    Returns:
        A `TransferReport`: every backbone layer loaded, the head skipped
        (it starts at zero, see `vispipe.models.transfer.zero_head`).

    Raises:
        WeightsFileError: A backbone layer missing from the file or of
            another shape (the message lists them).
    """
    report = TransferReport(source=source)
    plan, problems = [], []
    for layer in model.layers:
        if not layer.weights or isinstance(layer, Preprocess):
            continue
        if layer.name in HEAD_LAYERS:
            report.skipped[layer.name] = "new head for this dataset's classes"
            continue
        values = arrays.get(layer.name)
        want = [tuple(w.shape) for w in layer.weights]
        if values is None:
            problems.append(f"{layer.name} is not in the file")
        elif [v.shape for v in values] != want:
            problems.append(f"{layer.name} has shapes {[v.shape for v in values]} in the "
                            f"file, {want} here")
        else:
            plan.append((layer, values))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsFileError(
            f"{source} does not fit {model.name}: {'; '.join(problems[:5])}{more}. Is it the "
            "file for this network, width multiplier and version of keras.applications?"
        )
    for layer, values in plan:
        layer.set_weights(values)
        report.loaded.append(layer.name)
    zero_head(model)
    return report

