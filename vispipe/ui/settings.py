"""Settings of the web UI and the checks that keep user input safe.

User-supplied paths must lie inside a configured data root; user-supplied
names become folder names, so path characters are rejected.

Example:

```python
settings = UISettings(data_roots=["/data"], home="/srv/vispipe")
folder = confine("/data/cats/../dogs", settings.data_roots)
name = check_name("mnist <small>", "name")
```
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

__all__ = ["UISettings", "UnsafeInputError", "confine", "check_name", "is_within"]

_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


class UnsafeInputError(ValueError):
    """A path outside the data roots, or a name that is not a safe folder name."""


@dataclass
class UISettings:
    """How `vispipe ui` runs.

    Args:
        data_roots: Folders whose images may be used as dataset sources;
            every path typed in a form must lie inside one of them.
        home: Where the UI writes datasets, runs, exports and job folders
            (default `$VISPIPE_HOME/ui`, with `VISPIPE_HOME` ~/.vispipe).
        token: When set, every request needs it (`Authorization: Bearer`,
            the `vispipe_token` cookie, or `?token=` once to set the cookie).
            The serving stage started from the UI gets the same token.
        max_jobs: Jobs running at once; the others wait in the queue.
        max_upload_bytes: Largest accepted upload.
    """

    data_roots: list[str] = field(default_factory=list)
    home: str = ""
    token: str | None = None
    max_jobs: int = 1
    max_upload_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not self.home:
            base = os.environ.get("VISPIPE_HOME") or os.path.join(
                os.path.expanduser("~"), ".vispipe")
            self.home = os.path.join(base, "ui")
        self.home = os.path.abspath(self.home)
        self.data_roots = [os.path.realpath(r) for r in self.data_roots]
        if self.max_jobs < 1:
            raise ValueError(f"max_jobs: expected at least 1, got {self.max_jobs}.")

    def folder(self, kind: str) -> str:
        """`<home>/<kind>` (datasets, runs, jobs, uploads), created if needed."""
        path = os.path.join(self.home, kind)
        os.makedirs(path, exist_ok=True)
        return path


def confine(path: str, roots: list[str], what: str = "path") -> str:
    """The real path of `path` if it lies inside one of `roots`.

    Args:
        path: A user-supplied path (absolute, or relative to the first root).
        roots: Allowed folders (real paths).
        what: The form field, for the error message.

    Returns:
        The resolved absolute path (symlinks followed).

    Raises:
        UnsafeInputError: Empty, or outside every root (after `..` and
            symlinks are resolved).

    Example:

    ```python
    confine("cats", ["/data"])  # "/data/cats"
    ```
    """
    if not path or "\x00" in path:
        raise UnsafeInputError(f"{what}: expected a path inside the data roots, got {path!r}.")
    if not roots:
        raise UnsafeInputError(
            f"{what}: no data roots are configured (start `vispipe ui --data-root DIR`).")
    candidate = path if os.path.isabs(path) else os.path.join(roots[0], path)
    real = os.path.realpath(candidate)
    for root in roots:
        if is_within(real, root):
            return real
    raise UnsafeInputError(
        f"{what}: {path!r} is outside the data roots {roots}; expected a path inside one of them.")


def is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it (both already resolved with realpath)."""
    return path == folder or path.startswith(folder + os.sep)


def check_name(name: str, what: str = "name") -> str:
    """`name` stripped, if it is usable as a folder name.

    Any printable text is allowed (it is escaped wherever it is shown) except
    path separators, control characters, a leading dot and more than 100
    characters.

    Raises:
        UnsafeInputError: The name says why.

    Example:

    ```python
    check_name("LeNet <v2>")  # "LeNet <v2>"
    ```
    """
    name = (name or "").strip()
    if not name:
        raise UnsafeInputError(f"{what}: expected a name, got an empty one.")
    if len(name) > 100:
        raise UnsafeInputError(f"{what}: expected at most 100 characters, got {len(name)}.")
    if name.startswith(".") or _BAD_NAME.search(name):
        raise UnsafeInputError(
            f"{what}: {name!r} cannot be a folder name; expected no '/', '\\', control "
            "characters or leading '.'.")
    return name
