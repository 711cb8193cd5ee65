"""Writing outputs so that a reader never sees a half-written one.

Every file and folder vispipe writes goes through `atomic_path`: the work
happens under a temporary name beside the target, `.<name>.partial-<random>`
(the extension kept, since writers such as PIL, matplotlib and Keras pick
the format from it), renamed to the target once complete and removed if the
block fails or is interrupted. A folder that already exists is replaced so
that the target always holds one complete version: the old one is moved
aside (`.<name>.old-<random>`) and removed only once the new one is in place.

Example:

```python
with atomic_path("runs/x/model.keras") as tmp:
    model.save(tmp)
with atomic_path("datasets/mnist", folder=True) as tmp:
    ...  # write every file into tmp
write_json_atomic("runs/x/run.json", {"version": 2})
```
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from typing import Any, Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic"]


def _sibling(path: str, kind: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{kind}-{secrets.token_hex(4)}{ext}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _put_in_place(tmp: str, path: str) -> None:
    """Renames `tmp` to `path`; an existing folder at `path` is moved aside first."""
    if not os.path.isdir(path) or os.path.islink(path):
        os.replace(tmp, path)
        return
    old = _sibling(path, "old")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, folder: bool = False) -> Iterator[str]:
    """Yields a temporary path beside `path`, renamed to `path` when the block completes.

    Args:
        path: The target file or folder (its parent is created if needed).
        folder: Create the temporary as an empty folder to fill.

    Yields:
        The temporary path, on the same file system as `path`.

    Raises:
        Whatever the block raises (Ctrl-C included), after removing the
        temporary; the target is then untouched.

    Example:

    ```python
    with atomic_path("eval/confusion_matrix.png") as tmp:
        figure.savefig(tmp)
    ```
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _sibling(path, "partial")
    if folder:
        os.makedirs(tmp)
    try:
        yield tmp
        _put_in_place(tmp, path)
    finally:
        _remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Writes `text` (UTF-8) to `path` through `atomic_path`; returns `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return os.fspath(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> str:
    """Writes `data` as indented JSON to `path` through `atomic_path`; returns `path`."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
