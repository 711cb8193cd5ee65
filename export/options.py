"""`ExportOptions`: what `vispipe export` does, as a typed config section.

Values only (no TensorFlow), so the CLI can build its flags from it without
loading the converters. It is the `export:` section of the config tree:
`vispipe export --config FILE` reads it from YAML and `--set export.KEY=VALUE`
overrides it, checked by `vispipe.config_io.from_dict`.

Example:

```python
options = from_dict(ExportOptions, {"formats": ["tflite"], "top_k": 3}, "export")
```
"""

from __future__ import annotations

import dataclasses
from importlib.util import find_spec

from vispipe.configs import SPLITS, WHICH_MODELS, choices

__all__ = ["FORMATS", "FORMAT_VARIANTS", "FORMAT_CHOICES", "INTEROP_FORMATS", "COREML_WEIGHTS",
           "TFJS_QUANTIZATIONS", "PRUNE_DECAYS", "ExportOptions", "installed_formats"]

# The pruning fine-tune's learning-rate schedules (`vispipe.export.pruning.prune_model`).
PRUNE_DECAYS = ("constant", "cosine")
FORMATS = ("savedmodel", "tflite", "pruned", "coreml", "tfjs", "onnx", "openvino")
# Formats whose variants can also be asked for alone, e.g. "onnx_int8".
FORMAT_VARIANTS = {"onnx": ("float32", "float16", "int8"),
                   "openvino": ("float32", "float16", "int8")}
FORMAT_CHOICES = FORMATS + tuple(f"{f}_{v}" for f, variants in FORMAT_VARIANTS.items()
                                 for v in variants)
# Formats from the optional `interop` extra, with the modules they need; the
# default export includes them only when those are installed.
INTEROP_FORMATS = {"onnx": ("tf2onnx", "onnxruntime"), "openvino": ("openvino", "nncf")}


def installed_formats() -> tuple[str, ...]:
    """The `FORMATS` whose converters and runtimes are installed (what an empty `formats` means).

    Returns:
        E.g. every format, or all but "onnx" and "openvino" without the
        `interop` extra.
    """
    return tuple(f for f in FORMATS
                 if all(find_spec(module) is not None for module in INTEROP_FORMATS.get(f, ())))
COREML_WEIGHTS = ("float16", "int8")
TFJS_QUANTIZATIONS = ("float32", "float16", "uint8")


@dataclasses.dataclass
class ExportOptions:
    """Settings of `export_model` (defaults export and verify everything).

    Args:
        formats: Formats to export, from `FORMATS`, or single variants such
            as "onnx_int8" (empty, the default: every format whose tools are
            installed; ONNX and OpenVINO need the `interop` extra).
        name: Model name (default: the run's name).
        version: TF Serving version number.
        which: Run model to export: "final", "best" or "last".
        top_k: Top labels every artifact returns.
        calibration_size: Training images for int8 calibration.
        sparsities: Target sparsities of the pruned models.
        prune_epochs: Fine-tuning epochs per pruned model (at least
            `prune_min_steps` steps).
        prune_min_steps: Fine-tuning steps per pruned model at least: the
            length in steps, not epochs, is what recovers accuracy, and a
            small dataset's epochs are few steps. 80% on MobileNetV2 (5
            CIFAR classes, 2 epochs = 704 steps) dropped 3.70 points, 0.75
            above Keras at 1,250 steps; ResNet-20 (1,408 steps) and MNIST
            (1,688) already run more (`prune_model`, bench/README.md).
        prune_limit: Training images for the fine-tune (0: all).
        prune_learning_rate: Adam learning rate of the fine-tune (its start).
        prune_decay: The rate's schedule: "cosine" (to 0 over the
            fine-tune) or "constant".
        prune_max_drop: A pruned model fails verification when its top-1
            accuracy is more than this below the Keras model's (it is
            fine-tuned, so top-1 agreement is not the measure).
        coreml_weights: CoreML weight types.
        tfjs_quantizations: TF.js weight types.
        verify_split: Split to verify on ("": test, else val).
        verify_limit: Verify on N images spread evenly over the split (0: all).
        tfjs_verify_limit: Verify TF.js on N of those images, spread evenly
            (0: all). TF.js runs in pure JavaScript (Node's CPU backend, as
            a browser without WebGL would), tens of times slower than the
            native runtimes.
        metadata: CoreML metadata (author, license, description, version).
        seed: Seed of the fine-tunes.
        progress: Show progress.
    """

    formats: tuple[str, ...] = choices(FORMAT_CHOICES, ())
    name: str = ""
    version: int = 1
    which: str = choices(WHICH_MODELS, "final")
    top_k: int = 5
    calibration_size: int = 200
    sparsities: tuple[float, ...] = (0.5, 0.8)
    prune_epochs: int = 2
    prune_min_steps: int = 1250
    prune_limit: int = 0
    prune_learning_rate: float = 1e-3
    prune_decay: str = choices(PRUNE_DECAYS, "cosine")
    prune_max_drop: float = 0.01
    coreml_weights: tuple[str, ...] = choices(COREML_WEIGHTS, ("float16",))
    tfjs_quantizations: tuple[str, ...] = choices(TFJS_QUANTIZATIONS, TFJS_QUANTIZATIONS)
    verify_split: str = choices(("",) + SPLITS, "")
    verify_limit: int = 0
    tfjs_verify_limit: int = 0
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 42
    progress: bool = True
