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
import secrets
from dataclasses import dataclass, field

from vispipe.data.roots import OutsideRootsError, is_within, real_roots
from vispipe.data.roots import confine as confine_to_roots

__all__ = ["UISettings", "UnsafeInputError", "LOCAL_HOSTS", "new_token", "confine",
           "check_name", "is_within"]

_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
# The names a browser on this machine uses for it; `Host` must be one of these
# or one given with `--allowed-host` (a page under any other name is refused).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def new_token() -> str:
    """A fresh random access token (48 hex digits, as Jupyter's)."""
    return secrets.token_hex(24)


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
        token: Every request needs it (`Authorization: Bearer`, the
            `vispipe_token` cookie, or `?token=` once to set the cookie);
            a fresh random one by default, None for none (`--no-token`).
            The serving stage started from the UI gets the same token.
        allowed_hosts: Names the server answers to in the `Host` header
            (default: `LOCAL_HOSTS`); "*" answers to any (no DNS-rebinding
            protection).
        max_jobs: Jobs running at once; the others wait in the queue.
        max_upload_bytes: Largest accepted upload.
    """

    data_roots: list[str] = field(default_factory=list)
    home: str = ""
    token: str | None = field(default_factory=new_token)
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))
    max_jobs: int = 1
    max_upload_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not self.home:
            base = os.environ.get("VISPIPE_HOME") or os.path.join(
                os.path.expanduser("~"), ".vispipe")
            self.home = os.path.join(base, "ui")
        self.home = os.path.abspath(self.home)
        self.data_roots = real_roots(self.data_roots)
        self.allowed_hosts = [h.strip().strip("[]").lower() for h in self.allowed_hosts]
        if self.token == "":
            raise ValueError("token: expected a token, or None for no token; got an empty one.")
        if self.max_jobs < 1:
            raise ValueError(f"max_jobs: expected at least 1, got {self.max_jobs}.")

    def folder(self, kind: str) -> str:
        """`<home>/<kind>` (datasets, runs, jobs, uploads), created if needed."""
        path = os.path.join(self.home, kind)
        os.makedirs(path, exist_ok=True)
        return path


def confine(path: str, roots: list[str], what: str = "path") -> str:
    """`vispipe.data.roots.confine`, failing with `UnsafeInputError` (a 400 page).

    Example:

    ```python
    confine("cats", ["/data"])  # "/data/cats"
    ```
    """
    try:
        return confine_to_roots(path, roots, what)
    except OutsideRootsError as error:
        raise UnsafeInputError(str(error)) from None


def check_name(name: str, what: str = "name") -> str:
    """`name` stripped, if it is usable as a folder name.

    Any printable text is allowed (it is escaped wherever it is shown) except
    path separators, control characters, a leading dot, `${` (a job's config
    file would read it as an environment variable) and more than 100
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
    if name.startswith(".") or _BAD_NAME.search(name) or "${" in name:
        raise UnsafeInputError(
            f"{what}: {name!r} cannot be a folder name; expected no '/', '\\', '${{', control "
            "characters or leading '.'.")
    return name
