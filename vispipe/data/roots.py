"""Data roots: the folders a dataset (or a UI request) may read files from.

One check for every place that takes a user's path: the path is resolved
(`..` and symlinks followed) and must then lie inside one of the roots. A
symlink inside a root that points elsewhere is therefore outside.

Example:

```python
roots = real_roots(["/data/images"])
path = confine("cats/1.png", roots, "line 3")  # "/data/images/cats/1.png"
confine("/etc/passwd", roots)  # raises OutsideRootsError
```
"""

from __future__ import annotations

import os

__all__ = ["OutsideRootsError", "real_roots", "is_within", "confine"]


class OutsideRootsError(ValueError):
    """A path that is empty, or that resolves outside every data root."""


def real_roots(roots: list[str]) -> list[str]:
    """`roots` as real absolute paths (what `confine` compares against)."""
    return [os.path.realpath(root) for root in roots]


def is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it (both already resolved with realpath)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def confine(path: str, roots: list[str], what: str = "path") -> str:
    """The real path of `path` if it lies inside one of `roots`.

    Args:
        path: A user-supplied path (absolute, or relative to the first root).
        roots: Allowed folders, as `real_roots` returns them.
        what: What the path is (a form field, a list line), for the message.

    Returns:
        The resolved absolute path (symlinks followed).

    Raises:
        OutsideRootsError: Empty, no roots, or outside every root after `..`
            and symlinks are resolved; the message names `what`, the path and
            where it leads.

    Example:

    ```python
    confine("cats", ["/data"])  # "/data/cats"
    ```
    """
    if not path or "\x00" in path:
        raise OutsideRootsError(f"{what}: expected a path inside the data roots, got {path!r}.")
    if not roots:
        raise OutsideRootsError(
            f"{what}: no data roots are configured (start `vispipe ui --data-root DIR`).")
    candidate = path if os.path.isabs(path) else os.path.join(roots[0], path)
    real = os.path.realpath(candidate)
    if any(is_within(real, root) for root in roots):
        return real
    leads = "" if real == os.path.normpath(candidate) else f" (it leads to {real!r})"
    raise OutsideRootsError(
        f"{what}: {path!r} is outside the data roots {roots}{leads}; expected a path inside "
        "one of them.")
