"""Training: LR policies, optimizers, the trainer, the LR finder, run folders.

Names are imported on first use, so `vispipe.train.run_folder` can be used
without loading the trainer.

Example:

```python
from vispipe.train import train, resume, find_lr
result = train("datasets/mnist", "runs/mnist", ModelConfig(), TrainConfig(epochs=5))
```
"""

from __future__ import annotations

import importlib

__all__ = [
    "train",
    "resume",
    "TrainResult",
    "find_lr",
    "LRFinderResult",
    "make_schedule",
    "lr_at",
    "plot_schedule",
    "make_optimizer",
    "load_run_model",
    "latest_checkpoint",
    "RunFolder",
]

# Public name -> the module defining it.
_LAZY = {
    "train": "trainer",
    "resume": "trainer",
    "TrainResult": "trainer",
    "find_lr": "lr_finder",
    "LRFinderResult": "lr_finder",
    "make_schedule": "schedules",
    "lr_at": "schedules",
    "plot_schedule": "schedules",
    "make_optimizer": "optimizers",
    "load_run_model": "run_folder",
    "latest_checkpoint": "run_folder",
    "RunFolder": "run_folder",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vispipe.train' has no attribute {name!r}")
    module = importlib.import_module(f"vispipe.train.{_LAZY[name]}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
