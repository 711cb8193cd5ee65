"""Small datasets that ship with installed packages, written out as image folders.

Example:

```python
folder = write_sklearn_digits("/tmp/digits")  # /tmp/digits/<0-9>/<index>.png
```
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vispipe.configs import BUILTINS

__all__ = ["write_sklearn_digits", "write_builtin"]


def write_sklearn_digits(folder: str) -> str:
    """Writes scikit-learn's handwritten digits as one PNG per image.

    The 1,797 8x8 images (values 0-16) are scaled to 0-255 and stored at
    their native size, one sub-folder per digit; the dataset's image options
    resize them. Nothing is downloaded: the data ships with scikit-learn.

    Args:
        folder: Where to write (created if missing).

    Returns:
        `folder`, now holding `0/` ... `9/` with `<index:04d>.png` files.

    Example:

    >>> write_sklearn_digits("/tmp/digits")
    '/tmp/digits'
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for name in digits.target_names:
        os.makedirs(os.path.join(folder, str(name)), exist_ok=True)
    for index, (image, target) in enumerate(zip(pixels, digits.target)):
        path = os.path.join(folder, str(target), f"{index:04d}.png")
        Image.fromarray(image, "L").save(path)
    return folder


def write_builtin(name: str, folder: str) -> str:
    """Writes the built-in dataset `name` (one of `BUILTINS`) into `folder`."""
    if name == "digits":
        return write_sklearn_digits(folder)
    raise ValueError(f"builtin: expected one of {BUILTINS}, got {name!r}.")
