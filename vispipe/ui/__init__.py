"""The vispipe web UI: the DIGITS workflow in the browser (`vispipe ui`).

Pages read the SQLite registry and the run and dataset folders that the CLI
writes; long work runs as `vispipe` CLI verbs in worker processes
(`vispipe.ui.jobs`).

Example:

```python
from vispipe.ui import UISettings, create_app
app = create_app(UISettings(data_roots=["/data/images"]))
```
"""

from vispipe.ui.app import create_app
from vispipe.ui.settings import UISettings

__all__ = ["create_app", "UISettings"]
