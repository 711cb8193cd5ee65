"""Writing outputs so that a reader never sees a half-written one.

Example:

```python
partial = tempfile.mkdtemp(dir=os.path.dirname(out))
...  # write everything into `partial`
replace_folder(partial, out)
```
"""

from __future__ import annotations

import os
import secrets
import shutil

__all__ = ["replace_folder"]


def replace_folder(partial: str, output: str) -> None:
    """Renames the finished folder `partial` to `output`, replacing an old one.

    The old folder is moved aside first and removed only once the new one is
    in place, so `output` always holds one complete version.

    Args:
        partial: The completed folder, on the same file system as `output`.
        output: The final path.
    """
    if not os.path.exists(output):
        os.replace(partial, output)
        return
    old = f"{output}.old-{secrets.token_hex(4)}"
    os.replace(output, old)
    os.replace(partial, output)
    shutil.rmtree(old)
