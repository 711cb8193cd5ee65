"""TFLite models: float32, float16, dynamic-range int8 and full-integer int8.

Every variant takes uint8 pixels `[batch, H, W, C]` (batch resizable) and
returns `probabilities`, `label_ids` and `scores`. The full-integer model is
calibrated on a representative sample of the training set; its input is
pinned to scale 1, zero point 0, so its uint8 input is exactly the raw pixel,
and its outputs are uint8 (scale 1/256) besides the int32 label ids. The
quantized files store their all-zero zero points once per length
(`share_zero_points`: MobileNetV2 int8 3.28x -> 3.60x smaller than float32).

`labels.txt` and `export.json` are packed into each `.tflite` file as a zip
appended to the flatbuffer, as the TFLite Support metadata populator packs
associated files: `zipfile.ZipFile(path).read("labels.txt")` reads them back
and interpreters ignore them.

Example:

```python
path = convert_tflite(model, spec, "out/tflite/model_int8.tflite", "int8",
                      representative=train_images[:200])
probs = tflite_runner(path)(test_images)
```
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from vispipe.export.contract import (
    OUTPUT_LABEL_IDS,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCORES,
    RunSpec,
    serving_function,
)
from vispipe.export.tflite_zero_points import share_zero_points

__all__ = [
    "TFLITE_VARIANTS",
    "MIN_CALIBRATION_SAMPLES",
    "convert_tflite",
    "attach_files",
    "attached_files",
    "tflite_runner",
]

TFLITE_VARIANTS = ("float32", "float16", "dynamic_int8", "int8")
MIN_CALIBRATION_SAMPLES = 16


def _converter(model, spec: RunSpec, dtype: tf.DType, folder: str) -> tf.lite.TFLiteConverter:
    # A concrete function or a plain tf.Module leaves the Keras 3 variables as
    # unresolved READ_VARIABLE ops; an ExportArchive SavedModel freezes them.
    import keras

    height, width, channels = spec.image_shape
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_function(model, spec, resize=False),
                         input_signature=[tf.TensorSpec([None, height, width, channels],
                                                        dtype, "images")])
    archive.write_out(folder, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serving_default"])


def _representative(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    images = np.array(images, dtype=np.float32)
    # One pixel at 0 and one at 255 fix the input quantization to scale 1,
    # zero point 0 whatever the sample's range.
    images[0].flat[0] = 0.0
    images[0].flat[-1] = 255.0

    def gen():
        for image in images:
            yield [image[None]]

    return gen


def convert_tflite(
    model,
    spec: RunSpec,
    path: str,
    variant: str,
    *,
    representative: np.ndarray | None = None,
) -> str:
    """Converts the model to one TFLite variant and writes it to `path`.

    Args:
        model: The Keras model (may be a pruned copy).
        spec: The run.
        path: The `.tflite` file to write.
        variant: One of `TFLITE_VARIANTS`.
        representative: uint8 training images `[N, H, W, C]` for "int8"
            calibration (at least `MIN_CALIBRATION_SAMPLES`).

    Returns:
        `path`.

    Raises:
        ValueError: Unknown variant, or too few calibration images.

    Example:

    ```python
    convert_tflite(model, spec, "model_float16.tflite", "float16")
    ```
    """
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"TFLite variant: expected one of {TFLITE_VARIANTS}, got {variant!r}.")
    full_int8 = variant == "int8"
    if full_int8:
        count = 0 if representative is None else len(representative)
        if count < MIN_CALIBRATION_SAMPLES:
            raise ValueError(
                f"Full-integer int8 needs at least {MIN_CALIBRATION_SAMPLES} representative "
                f"training images for calibration, got {count}."
            )
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as folder:
        converter = _converter(model, spec, tf.float32 if full_int8 else tf.uint8, folder)
        flatbuffer = _convert(converter, variant, representative)
    tmp = f"{path}.partial"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, path)
    return path


def _convert(converter, variant: str, representative: np.ndarray | None) -> bytes:
    full_int8 = variant == "int8"
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if full_int8:
        converter.representative_dataset = _representative(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    flatbuffer = converter.convert()
    return flatbuffer if variant in ("float32", "float16") else share_zero_points(flatbuffer)


def attach_files(path: str, files: dict[str, bytes]) -> None:
    """Appends `files` to a `.tflite` file as a zip (TFLite associated files)."""
    with zipfile.ZipFile(path, "a") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def attached_files(path: str) -> dict[str, bytes]:
    """The associated files packed into a `.tflite` file (empty when none)."""
    if not zipfile.is_zipfile(path):
        return {}
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale == 0:
        return value
    return (value.astype(np.float32) - zero_point) * scale


def _quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if scale in (0, 1.0) and zero_point == 0:
        return images.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)


def tflite_runner(path: str, num_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Loads a `.tflite` file in the LiteRT interpreter.

    Args:
        path: The model file.
        num_threads: Interpreter threads (None: LiteRT's default).

    Returns:
        `images (uint8 [B, H, W, C]) -> probabilities (float32 [B, classes])`;
        quantized outputs are dequantized. Its `outputs(images)` attribute
        returns every output (probabilities, label_ids, scores) as floats/ints.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    input_name = next(iter(runner.get_input_details()))
    input_detail = runner.get_input_details()[input_name]
    output_details = runner.get_output_details()

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        raw = runner(**{input_name: _quantize(np.asarray(images), input_detail)})
        return {name: (value if name == OUTPUT_LABEL_IDS else
                       _dequantize(value, output_details[name]))
                for name, value in raw.items()}

    def run(images: np.ndarray) -> np.ndarray:
        return outputs(images)[OUTPUT_PROBABILITIES]

    run.outputs = outputs
    run.output_names = (OUTPUT_PROBABILITIES, OUTPUT_LABEL_IDS, OUTPUT_SCORES)
    return run
