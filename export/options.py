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

from vispipe.configs import SPLITS, WHICH_MODELS, choices

__all__ = ["FORMATS", "COREML_WEIGHTS", "TFJS_QUANTIZATIONS", "ExportOptions"]

FORMATS = ("savedmodel", "tflite", "pruned", "coreml", "tfjs")
COREML_WEIGHTS = ("float16", "int8")
TFJS_QUANTIZATIONS = ("float32", "float16", "uint8")


@dataclasses.dataclass
class ExportOptions:
    """Settings of `export_model` (defaults export and verify everything).

    Args:
        formats: Formats to export, from `FORMATS` (default: all).
        name: Model name (default: the run's name).
        version: TF Serving version number.
        which: Run model to export: "final", "best" or "last".
        top_k: Top labels every artifact returns.
        calibration_size: Training images for int8 calibration.
        sparsities: Target sparsities of the pruned models.
        prune_epochs: Fine-tuning epochs per pruned model.
        prune_limit: Training images for the fine-tune (0: all).
        prune_learning_rate: Adam learning rate of the fine-tune.
        prune_max_drop: A pruned model fails verification when its top-1
            accuracy is more than this below the Keras model's (it is
            fine-tuned, so top-1 agreement is not the measure).
        coreml_weights: CoreML weight types.
        tfjs_quantizations: TF.js weight types.
        verify_split: Split to verify on ("": test, else val).
        verify_limit: Verify on N images spread evenly over the split (0: all).
        metadata: CoreML metadata (author, license, description, version).
        seed: Seed of the fine-tunes.
        progress: Show progress.
    """

    formats: tuple[str, ...] = choices(FORMATS, FORMATS)
    name: str = ""
    version: int = 1
    which: str = choices(WHICH_MODELS, "final")
    top_k: int = 5
    calibration_size: int = 200
    sparsities: tuple[float, ...] = (0.5, 0.8)
    prune_epochs: int = 2
    prune_limit: int = 0
    prune_learning_rate: float = 1e-4
    prune_max_drop: float = 0.01
    coreml_weights: tuple[str, ...] = choices(COREML_WEIGHTS, ("float16",))
    tfjs_quantizations: tuple[str, ...] = choices(TFJS_QUANTIZATIONS, TFJS_QUANTIZATIONS)
    verify_split: str = choices(("",) + SPLITS, "")
    verify_limit: int = 0
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 42
    progress: bool = True
