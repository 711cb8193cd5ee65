"""Device set-up of a run: GPUs, memory growth, mixed precision and seeds.

`mixed_precision="on"` without a GPU is an error rather than a silent
fallback: float16 on a CPU is slower than float32 and bfloat16 changes the
numerics, so asking for it there is a configuration mistake worth reporting.

Example:

```python
seed_everything(42)
device = configure_device("auto")
print(device.device, device.mixed_precision)
```
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import tensorflow as tf

from vispipe.configs import MIXED_PRECISION_MODES

__all__ = ["DeviceInfo", "configure_device", "seed_everything"]


_log = logging.getLogger(__name__)


@dataclass
class DeviceInfo:
    """Where a run computes.

    Attributes:
        device: "GPU:0 (<name>)" for the first GPU, or "CPU".
        gpus: Names of all visible GPUs.
        mixed_precision: The Keras dtype policy in force: "mixed_float16"
            or "float32".
    """

    device: str
    gpus: list[str] = field(default_factory=list)
    mixed_precision: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_name(gpu) -> str:
    details = tf.config.experimental.get_device_details(gpu)
    return details.get("device_name", gpu.name)


def configure_device(mixed_precision: str = "auto") -> DeviceInfo:
    """Lists GPUs, enables memory growth and sets the dtype policy.

    Args:
        mixed_precision: "auto" (mixed_float16 when a GPU is present), "on"
            (mixed_float16; needs a GPU) or "off" (float32).

    Returns:
        A `DeviceInfo`.

    Raises:
        ValueError: An unknown mode, or "on" on a machine without a GPU.

    Example:

    ```python
    info = configure_device("off")
    assert info.mixed_precision == "float32"
    ```
    """
    if mixed_precision not in MIXED_PRECISION_MODES:
        raise ValueError(
            f"train.mixed_precision: expected one of {MIXED_PRECISION_MODES}, "
            f"got {mixed_precision!r}."
        )
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # Only settable before the GPU is first used; a second run in the
            # same process keeps the first run's setting.
            _log.debug("Memory growth of %s already fixed for this process.", gpu.name)
    if mixed_precision == "on" and not gpus:
        raise ValueError(
            "train.mixed_precision is 'on' but no GPU is visible; mixed "
            "precision (float16) only speeds up GPU training. Use 'auto' or 'off'."
        )
    use_mixed = bool(gpus) and mixed_precision in ("auto", "on")
    policy = "mixed_float16" if use_mixed else "float32"
    # Always set it: an earlier run in this process may have left another.
    keras.mixed_precision.set_global_policy(policy)
    names = [_gpu_name(gpu) for gpu in gpus]
    device = f"GPU:0 ({names[0]})" if names else "CPU"
    return DeviceInfo(device=device, gpus=names, mixed_precision=policy)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow (`keras.utils.set_random_seed`)."""
    keras.utils.set_random_seed(int(seed))
