"""Code that runs when a heavy module is first imported, without importing it early.

`import vispipe` must stay cheap (the web UI never loads TensorFlow), yet
some set-up belongs to the moment Keras or TensorFlow loads: registering
vispipe's Keras objects, quieting TensorFlow's start-up. `on_import` wraps
the loading of one top-level module (a meta-path finder that removes itself
once the module has loaded); a module already loaded is too late to wrap.

Example:

```python
on_import("keras", lambda load: (load(), register_keras_objects()))
```
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any, Callable

__all__ = ["on_import"]

Wrap = Callable[[Callable[[], None]], Any]


class _WrappingLoader(importlib.abc.Loader):
    """Runs the real loader's `exec_module` inside `wrap`."""

    def __init__(self, loader: importlib.abc.Loader, wrap: Wrap):
        self._loader, self._wrap = loader, wrap

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _unwatch(module.__name__)
        self._wrap(lambda: self._loader.exec_module(module))

    def __getattr__(self, name: str) -> Any:  # Resource readers and the like.
        return getattr(self._loader, name)


class _Watcher(importlib.abc.MetaPathFinder):
    """Finds `name` with the other finders and wraps its loader, once."""

    def __init__(self, name: str, wrap: Wrap):
        self.name, self.wrap = name, wrap

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        # Found by the other finders. A probe (`importlib.util.find_spec("keras")`, as
        # TensorFlow makes) loads nothing: the watcher stays until the module executes.
        index = sys.meta_path.index(self)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(index, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _WrappingLoader(spec.loader, self.wrap)
        return spec


def _unwatch(name: str) -> None:
    """Removes the watcher of `name` (its module is executing now)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _Watcher) and f.name == name)]


def on_import(name: str, wrap: Wrap) -> bool:
    """Calls `wrap(load)` when top-level module `name` is first imported.

    Args:
        name: A top-level module, e.g. "keras".
        wrap: Gets `load`, which executes the module; it must call it once
            (it may do something before and after). One wrap per module:
            a second one for the same module is ignored.

    Returns:
        False when `name` is already imported (nothing is installed).
    """
    if name in sys.modules:
        return False
    if not any(isinstance(f, _Watcher) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _Watcher(name, wrap))
    return True
