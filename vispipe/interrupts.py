"""SIGTERM as Ctrl-C, so that killed jobs clean up like interrupted ones.

Kubernetes, the UI's abort button and `kill` stop a job with SIGTERM, whose
default action ends the process at once: no `finally`, no temporary folder
removed, no run marked interrupted. Inside `sigterm_as_interrupt()` the
signal raises `KeyboardInterrupt` instead, which every cleanup path already
handles.

Example:

```python
with sigterm_as_interrupt():
    long_job()  # SIGTERM -> KeyboardInterrupt("received signal 15")
```
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["sigterm_as_interrupt"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turns SIGTERM into `KeyboardInterrupt` while the block runs.

    Signals land in the main thread only, so elsewhere this does nothing.
    The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
