"""What the training jobs of this machine can use, found without importing TensorFlow.

The New-model page offers mixed precision "on" only with a GPU, mirrored
training only with two or more GPUs, and Horovod only when it is installed
with its `horovodrun` launcher. Pages must stay fast, so GPUs are counted
from the NVIDIA driver's files (what `nvidia-smi -L` lists), narrowed by
`CUDA_VISIBLE_DEVICES`, instead of asking TensorFlow.

Example:

```python
caps = capabilities()
caps.distributed  # ("none", "mirrored") on a host with 2 GPUs and no Horovod
```
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import sys
from dataclasses import dataclass

__all__ = ["Capabilities", "capabilities", "count_gpus", "horovodrun_path", "horovod_launcher"]


def count_gpus(environ: dict[str, str] | None = None, proc_root: str = "/proc") -> int:
    """GPUs a job would see: the NVIDIA driver's devices, limited by `CUDA_VISIBLE_DEVICES`.

    Args:
        environ: The environment (default `os.environ`).
        proc_root: Where procfs is mounted (for tests).
    """
    environ = os.environ if environ is None else environ
    present = len(glob.glob(os.path.join(proc_root, "driver", "nvidia", "gpus", "*")))
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    # CUDA stops at the first invalid entry, e.g. "-1" hides every GPU.
    ids = []
    for item in visible.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break
        ids.append(item)
    return min(len(ids), present)


def horovodrun_path() -> str | None:
    """`horovodrun` beside this interpreter when horovod.tensorflow is installed, else None."""
    path = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    try:
        installed = importlib.util.find_spec("horovod.tensorflow") is not None
    except ImportError:
        installed = False
    return path if installed and os.access(path, os.X_OK) else None


def horovod_launcher(processes: int) -> list[str]:
    """The `horovodrun` prefix of a job with `processes` ranks on this host (Gloo)."""
    launcher = horovodrun_path()
    if launcher is None:
        raise ValueError("distributed: horovod is not installed (no horovodrun beside "
                         f"{sys.executable}); expected none or mirrored.")
    return [launcher, "-np", str(processes), "--gloo", "-H", f"localhost:{processes}"]


@dataclass(frozen=True)
class Capabilities:
    """Device options of this machine's training jobs.

    Attributes:
        gpus: GPUs a job would see.
        mixed_precision: Offered `train.mixed_precision` modes.
        distributed: Offered `--distributed` modes.
    """

    gpus: int
    mixed_precision: tuple[str, ...]
    distributed: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """This machine's `Capabilities` (looked up once per process)."""
    gpus = count_gpus()
    modes = ("auto", "on", "off") if gpus else ("auto", "off")
    distributed = ("none",) + (("mirrored",) if gpus >= 2 else ()) + (
        ("horovod",) if horovodrun_path() else ())
    return Capabilities(gpus=gpus, mixed_precision=modes, distributed=distributed)
