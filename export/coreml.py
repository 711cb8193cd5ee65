"""CoreML ML Program: image input with the run's normalization, classifier output.

The normalization moves into the image input's `scale` and `bias` (CoreML
computes `pixel * scale + bias` per channel) whenever that is exact: modes
"standardize" with one standard deviation for all channels (every grayscale
model), "pixel", "scale" and "none". Otherwise (per-channel standard
deviations that differ, or a mean image) the input is the raw pixel
(scale 1, bias 0) and the `Preprocess` layer stays inside the program.
The output is a classifier: `classLabel` and `classLabel_probs`, with the
run's labels. Weights are float16 by default, or 8-bit (linear symmetric
weight quantization) on request.

coremltools has no runtime on Linux, so `verify_coreml_spec` checks the
saved model's spec (input, outputs, labels, op count, weight size); numeric
parity (`coreml_runner`) needs macOS.

Example:

```python
path = convert_coreml(model, spec, "out/coreml/mnist.mlpackage", weights="float16")
summary = verify_coreml_spec(path, spec)
```
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from vispipe.export.contract import RunSpec
from vispipe.export.options import COREML_WEIGHTS

__all__ = [
    "image_scale_bias",
    "convert_coreml",
    "verify_coreml_spec",
    "coreml_runner",
]

_INPUT = "image"


def image_scale_bias(preprocess: dict[str, Any], channels: int) -> tuple[float, list[float], bool]:
    """CoreML image `scale`/`bias` equal to the run's normalization.

    Args:
        preprocess: The run's `{"mode", "mean", "std"}`.
        channels: Image channels.

    Returns:
        `(scale, bias, exact)`: with `exact` False the normalization cannot
        be written as one scale and per-channel biases, and `(1.0, [0...])`
        is returned (the model keeps its `Preprocess` layer).
    """
    mode = preprocess.get("mode")
    if preprocess.get("to_rgb"):  # Gray repeated to RGB: the model keeps its layer.
        return 1.0, [0.0] * channels, False
    broadcast = lambda values: [float(v) for v in values] * (  # noqa: E731
        channels if len(values) == 1 else 1)
    if mode == "none":
        return 1.0, [0.0] * channels, True
    if mode == "scale":
        return 1.0 / 255.0, [0.0] * channels, True
    if mode == "pixel":
        return 1.0 / 255.0, [-m / 255.0 for m in broadcast(preprocess["mean"])], True
    if mode == "standardize":
        std = [s if s > 0 else 1.0 for s in broadcast(preprocess["std"])]
        if max(std) - min(std) <= 1e-6 * max(std):
            mean = broadcast(preprocess["mean"])
            return 1.0 / std[0], [-m / std[0] for m in mean], True
    return 1.0, [0.0] * channels, False


def _without_preprocess(model: keras.Model) -> keras.Model:
    """A copy of `model` whose "preprocess" layer is the identity."""
    def clone(layer):
        if layer.name == "preprocess":
            return keras.layers.Identity(name="preprocess")
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def convert_coreml(
    model: keras.Model,
    spec: RunSpec,
    path: str,
    *,
    weights: str = "float16",
    metadata: dict[str, str] | None = None,
) -> str:
    """Converts the model to a CoreML ML Program (`.mlpackage`).

    Args:
        model: The Keras model.
        spec: The run.
        path: The `.mlpackage` folder to write.
        weights: "float16" (compute and weights in float16) or "int8"
            (float16 plus 8-bit linear weight quantization).
        metadata: `author`, `license`, `description`, `version` and any
            other key (stored as user-defined metadata).

    Returns:
        `path`.

    Raises:
        ValueError: Unknown `weights`.

    Example:

    ```python
    convert_coreml(model, spec, "mnist.mlpackage", metadata={"author": "me"})
    ```
    """
    import coremltools as ct

    if weights not in COREML_WEIGHTS:
        raise ValueError(f"CoreML weights: expected one of {COREML_WEIGHTS}, got {weights!r}.")
    height, width, channels = spec.image_shape
    scale, bias, exact = image_scale_bias(spec.preprocess, channels)
    network = _without_preprocess(model) if exact else model
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as folder:
        # coremltools takes one concrete function (a Keras 3 SavedModel has
        # several); an ExportArchive lets it freeze the Keras 3 variables.
        archive = keras.export.ExportArchive()
        archive.track(network)
        archive.add_endpoint(
            "serving_default", lambda x: network(x, training=False),
            input_signature=[tf.TensorSpec([1, height, width, channels], tf.float32, _INPUT)])
        archive.write_out(folder, verbose=False)
        loaded = tf.saved_model.load(folder)  # must outlive the conversion
        function = loaded.signatures["serving_default"]
        mlmodel = ct.convert(
            [function], source="tensorflow", convert_to="mlprogram",
            inputs=[ct.ImageType(
                name=_INPUT, shape=(1, height, width, channels), scale=scale,
                bias=bias if channels == 3 else bias[0],
                color_layout=ct.colorlayout.RGB if channels == 3 else ct.colorlayout.GRAYSCALE,
                channel_first=False)],
            classifier_config=ct.ClassifierConfig(list(spec.classes)),
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS15,
        )
    if weights == "int8":
        from coremltools.optimize.coreml import (
            OpLinearQuantizerConfig,
            OptimizationConfig,
            linear_quantize_weights,
        )

        mlmodel = linear_quantize_weights(mlmodel, OptimizationConfig(
            global_config=OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)))
    meta = dict(metadata or {})
    mlmodel.author = meta.pop("author", "vispipe")
    mlmodel.license = meta.pop("license", "")
    mlmodel.short_description = meta.pop(
        "description", f"{spec.name}: {spec.num_classes}-class image classifier")
    mlmodel.version = str(meta.pop("version", "1"))
    user = {"labels": json.dumps(list(spec.classes)),
            "preprocess": json.dumps(spec.to_json()["preprocess"]),
            "normalization_in": "image_input" if exact else "program",
            "source_run": spec.run_dir, "weights": weights}
    user.update({k: str(v) for k, v in meta.items()})
    mlmodel.user_defined_metadata.update(user)
    mlmodel.save(path)
    return path


def _operations(model_spec) -> list:
    function = model_spec.mlProgram.functions["main"]
    return list(function.block_specializations[function.opset].operations)


def _string_values(value) -> list[str]:
    """Strings of a MIL argument: a list of strings or one string tensor."""
    if value.HasField("immediateValue") and value.immediateValue.HasField("list"):
        return [v.immediateValue.tensor.strings.values[0]
                for v in value.immediateValue.list.values]
    return list(value.immediateValue.tensor.strings.values)


def verify_coreml_spec(path: str, spec: RunSpec) -> dict[str, Any]:
    """Checks a saved `.mlpackage` against the run, without a CoreML runtime.

    Args:
        path: The `.mlpackage`.
        spec: The run.

    Returns:
        `{"input", "outputs", "labels", "op_count", "op_types",
        "weights_bytes", "metadata"}`.

    Raises:
        ValueError: The spec disagrees with the run (naming what differs).
    """
    import coremltools as ct

    model_spec = ct.utils.load_spec(path)
    if not model_spec.HasField("mlProgram"):
        raise ValueError(f"{path}: expected an ML Program, got {model_spec.WhichOneof('Type')}.")
    height, width, channels = spec.image_shape
    image = model_spec.description.input[0].type.imageType
    color = "GRAYSCALE" if image.colorSpace == image.GRAYSCALE else "RGB"
    expected_color = "GRAYSCALE" if channels == 1 else "RGB"
    if (image.height, image.width, color) != (height, width, expected_color):
        raise ValueError(
            f"{path}: input image is {image.height}x{image.width} {color}, the run takes "
            f"{height}x{width} {expected_color}.")
    operations = _operations(model_spec)
    classify = [op for op in operations if op.type == "classify"]
    if not classify:
        raise ValueError(f"{path}: the program has no classify op.")
    labels = _string_values(classify[0].inputs["classes"].arguments[0].value) if (
        classify[0].inputs["classes"].arguments[0].HasField("value")) else []
    if labels != list(spec.classes):
        raise ValueError(f"{path}: class labels {labels[:5]}... differ from the run's "
                         f"{list(spec.classes)[:5]}...")
    outputs = [o.name for o in model_spec.description.output]
    if model_spec.description.predictedFeatureName not in outputs:
        raise ValueError(f"{path}: predicted feature "
                         f"{model_spec.description.predictedFeatureName!r} is not among {outputs}.")
    weights_dir = os.path.join(path, "Data", "com.apple.CoreML", "weights")
    weights_bytes = sum(os.path.getsize(os.path.join(weights_dir, f))
                        for f in os.listdir(weights_dir)) if os.path.isdir(weights_dir) else 0
    meta = model_spec.description.metadata
    return {
        "input": {"name": model_spec.description.input[0].name, "height": image.height,
                  "width": image.width, "color": color},
        "outputs": outputs,
        "labels": labels,
        "op_count": len(operations),
        "op_types": sorted({op.type for op in operations}),
        "weights_bytes": weights_bytes,
        "metadata": {"author": meta.author, "license": meta.license,
                     "description": meta.shortDescription, "version": meta.versionString,
                     **dict(meta.userDefined)},
    }


def coreml_runner(path: str, spec: RunSpec) -> Callable[[np.ndarray], np.ndarray]:
    """`images -> probabilities` through CoreML (macOS only).

    Raises:
        RuntimeError: Not on macOS (coremltools has no runtime elsewhere).
    """
    if platform.system() != "Darwin":
        raise RuntimeError(f"CoreML prediction needs macOS; this is {platform.system()}.")
    import coremltools as ct
    from PIL import Image

    mlmodel = ct.models.MLModel(path)
    probs_name = [o.name for o in mlmodel.get_spec().description.output
                  if o.name != mlmodel.get_spec().description.predictedFeatureName][0]
    mode = "L" if spec.image_shape[2] == 1 else "RGB"

    def run(images: np.ndarray) -> np.ndarray:
        rows = []
        for image in np.asarray(images, np.uint8):
            pil = Image.fromarray(image[:, :, 0] if mode == "L" else image, mode)
            probs = mlmodel.predict({_INPUT: pil})[probs_name]
            rows.append([probs[label] for label in spec.classes])
        return np.asarray(rows, np.float32)

    return run
