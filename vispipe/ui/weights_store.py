"""The UI's pretrained-weights store: uploaded weights files a new model can start from.

As DIGITS's pretrained-model store, an uploaded file is kept (under
`<home>/weights/<content hash>/<its name>`) and offered again on every
new-model form; `model.weights` then names the stored file. Uploads are
size-limited by the UI's upload limit and must be a file `model.weights`
reads: a `.keras` model (a zip) or a `.weights.h5` file (HDF5), checked by
name and by its first bytes before anything is written.

Example:

```python
stored = store_weights(data, "cifar.weights.h5", settings)
config.model.weights = stored.path
[w.name for w in list_weights(settings)]
```
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from vispipe.fileio import atomic_path
from vispipe.ui.settings import UISettings, UnsafeInputError, check_name

__all__ = ["WEIGHTS_TYPES", "StoredWeights", "store_weights", "list_weights", "find_weights",
           "stored_weights_at"]

# The files `model.weights` reads, by name ending, with the bytes they start with.
WEIGHTS_TYPES = {".weights.h5": b"\x89HDF\r\n\x1a\n", ".keras": b"PK\x03\x04"}
_STORE = "weights"


@dataclass(frozen=True)
class StoredWeights:
    """A weights file in the store.

    Attributes:
        id: Its content hash (16 hex digits), the form's value.
        name: The uploaded file's name (shown).
        path: The stored file.
        size: Its size in bytes.
    """

    id: str
    name: str
    path: str
    size: int


def _read(folder: str) -> StoredWeights | None:
    names = [n for n in os.listdir(folder) if n.endswith(tuple(WEIGHTS_TYPES))]
    if len(names) != 1:
        return None
    path = os.path.join(folder, names[0])
    return StoredWeights(os.path.basename(folder), names[0], path, os.path.getsize(path))


def store_weights(data: bytes, filename: str, settings: UISettings) -> StoredWeights:
    """Checks an uploaded weights file and keeps it in the store (once per content).

    Args:
        data: The file's bytes (already read within the upload limit).
        filename: The upload's name; it must end in `.keras` or `.weights.h5`.
        settings: The UI settings (home, upload limit).

    Returns:
        The stored file.

    Raises:
        UnsafeInputError: Over the upload limit, a name that cannot be a
            file name, another kind of file, or contents that are not one.
    """
    if len(data) > settings.max_upload_bytes:
        raise UnsafeInputError(f"weights file {filename!r} is {len(data)} bytes; expected at most "
                               f"{settings.max_upload_bytes} (`vispipe ui --max-upload-mb N`).")
    name = check_name(os.path.basename(filename or ""), "weights file")
    kind = next((k for k in WEIGHTS_TYPES if name.lower().endswith(k)), None)
    if kind is None:
        raise UnsafeInputError(f"weights file {name!r}: expected a name ending in "
                               f"{' or '.join(WEIGHTS_TYPES)}.")
    if not data.startswith(WEIGHTS_TYPES[kind]):
        raise UnsafeInputError(f"weights file {name!r} is not a {kind} file (its first bytes "
                               f"are not {'HDF5' if kind == '.weights.h5' else 'a zip'}'s).")
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = os.path.join(settings.folder(_STORE), digest)
    if not os.path.isdir(folder):
        with atomic_path(folder, folder=True) as tmp:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
    return _read(folder)


def list_weights(settings: UISettings) -> list[StoredWeights]:
    """Every stored weights file, newest first."""
    root = settings.folder(_STORE)
    folders = [os.path.join(root, n) for n in os.listdir(root) if not n.startswith(".")]
    stored = [w for w in map(_read, filter(os.path.isdir, folders)) if w is not None]
    return sorted(stored, key=lambda w: -os.path.getmtime(w.path))


def find_weights(settings: UISettings, weights_id: str) -> StoredWeights | None:
    """The stored file with this id, else None."""
    return next((w for w in list_weights(settings) if w.id == weights_id), None)


def stored_weights_at(settings: UISettings, path: str) -> StoredWeights | None:
    """The stored file at `path` (a run's `model.weights`), else None."""
    return next((w for w in list_weights(settings) if w.path == path), None)
