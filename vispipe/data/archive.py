"""Image folders packed in an archive: unpacked once into a cache and reused.

Example:

```python
cfg = resolve_archive(DatasetConfig(archive="mnist-png.tar.gz",
                                    train_dir="mnist-png/train", output="ds"))
# cfg.train_dir is now an absolute folder inside the cache
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
import zipfile

from vispipe.configs import DatasetConfig
from vispipe.fileio import atomic_path

__all__ = ["ARCHIVE_SUFFIXES", "cache_root", "unpack_archive", "resolve_archive"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_PATH_FIELDS = (
    "source", "train_dir", "val_dir", "test_dir",
    "train_list", "val_list", "test_list", "labels_file",
)


def cache_root() -> str:
    """`$VISPIPE_CACHE`, else `$VISPIPE_HOME/cache` (~/.vispipe/cache)."""
    if os.environ.get("VISPIPE_CACHE"):
        return os.environ["VISPIPE_CACHE"]
    home = os.environ.get("VISPIPE_HOME") or os.path.join(
        os.path.expanduser("~"), ".vispipe"
    )
    return os.path.join(home, "cache")


def _fingerprint(path: str) -> str:
    stat = os.stat(path)
    key = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _safe_members(archive: tarfile.TarFile, path: str) -> list[tarfile.TarInfo]:
    members = []
    for member in archive.getmembers():
        name = os.path.normpath(member.name)
        if name.startswith("..") or os.path.isabs(name):
            raise ValueError(f"Archive {path!r} holds an unsafe path {member.name!r}.")
        if member.isfile() or member.isdir():
            members.append(member)
    return members


def unpack_archive(path: str) -> str:
    """Unpacks an archive into the cache (once) and returns the folder.

    Args:
        path: A .tar.gz, .tgz, .tar or .zip file.

    Returns:
        The folder holding the archive's contents. A later call with the same
        unchanged archive returns it without unpacking again.

    Raises:
        FileNotFoundError: No such archive.
        ValueError: Not a supported archive, or it holds paths outside itself.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Dataset archive {path!r} does not exist.")
    if not path.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(
            f"Dataset archive {path!r}: expected one of {', '.join(ARCHIVE_SUFFIXES)}."
        )
    stem = os.path.basename(path).split(".")[0]
    target = os.path.join(cache_root(), f"{stem}-{_fingerprint(path)}")
    if os.path.isdir(target):
        return target
    with atomic_path(target, folder=True) as partial:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    normalized = os.path.normpath(name)
                    if normalized.startswith("..") or os.path.isabs(normalized):
                        raise ValueError(f"Archive {path!r} holds an unsafe path {name!r}.")
                archive.extractall(partial)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(partial, members=_safe_members(archive, path))
    return target


def resolve_archive(config: DatasetConfig) -> DatasetConfig:
    """Returns `config` with its paths pointing into the unpacked `archive`.

    A config without `archive` is returned unchanged.
    """
    if not config.archive:
        return config
    root = unpack_archive(config.archive)
    updates = {"archive": ""}
    for name in _PATH_FIELDS:
        value = getattr(config, name)
        if value and not os.path.isabs(value):
            updates[name] = os.path.join(root, value)
    return dataclasses.replace(config, **updates)
