"""A quiet TensorFlow start-up for the `vispipe` command.

On a machine without a GPU, importing TensorFlow 2.19 prints a screenful of
harmless messages: cuFFT/cuDNN/cuBLAS "Unable to register ... factory",
"computation placer already registered", "failed call to cuInit". Some come
from TensorFlow's logging (hidden by `TF_CPP_MIN_LOG_LEVEL=3`), others from
absl before its logging is initialised, written straight to file descriptor
2 whatever the level. So, unless the user has set `TF_CPP_MIN_LOG_LEVEL`,
`quiet_tensorflow_startup` sets it to 3 and, while `import tensorflow` runs,
captures descriptor 2 and writes back every line but the known start-up
messages.

Example:

```python
quiet_tensorflow_startup()  # before anything imports TensorFlow
import tensorflow as tf      # nothing printed
```
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Callable

from vispipe.import_hooks import on_import

__all__ = ["STARTUP_NOISE", "quiet_tensorflow_startup"]

STARTUP_NOISE = re.compile(
    r"Unable to register cu(DNN|BLAS|FFT) factory|computation placer already registered|"
    r"failed call to cuInit|All log messages before absl::InitializeLog\(\) is called"
)


def _filtered_stderr(load: Callable[[], None]) -> None:
    """Runs `load` with descriptor 2 captured, then writes back what is not noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            load()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not STARTUP_NOISE.search(line)))
            sys.stderr.flush()


def quiet_tensorflow_startup() -> bool:
    """Hides TensorFlow's start-up messages, unless `TF_CPP_MIN_LOG_LEVEL` is set.

    Call it before TensorFlow is imported.

    Returns:
        Whether it did (False: the user chose a level, or TensorFlow is
        already loaded).
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return on_import("tensorflow", _filtered_stderr)
