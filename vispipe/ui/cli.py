"""The `vispipe ui` verb: the web UI on one port.

```
vispipe ui --port 5000 --data-root /data/images --max-jobs 2 --token "$TOKEN"
```

Example:

```python
verbs = parser.add_subparsers(dest="verb")
add_ui_parser(verbs)
```
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_ui_parser"]


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from vispipe.ui.app import create_app
    from vispipe.ui.settings import UISettings

    for root in args.data_root:
        if not os.path.isdir(root):
            raise ValueError(f"--data-root: expected an existing folder, got {root!r}.")
    settings = UISettings(data_roots=args.data_root, home=args.home or "", token=args.token,
                          max_jobs=args.max_jobs, max_upload_bytes=args.max_upload_mb << 20)
    print(f"vispipe ui on http://{args.host}:{args.port}/ (data roots: "
          f"{', '.join(settings.data_roots) or 'none'}; home {settings.home})", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def add_ui_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers `ui` on the `vispipe` verbs (`parser.add_subparsers()`).

    Returns:
        The `ui` parser; its `handler` default starts the server.
    """
    parser = subparsers.add_parser("ui", help="the web UI: datasets, training, models in a browser")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--data-root", action="append", default=[], metavar="DIR",
                        help="folder whose images forms may use (repeatable)")
    parser.add_argument("--home", help="folder for the UI's datasets, runs, exports, jobs "
                                       "(default $VISPIPE_HOME/ui)")
    parser.add_argument("--token", default=os.environ.get("VISPIPE_UI_TOKEN"),
                        help="require this token (default $VISPIPE_UI_TOKEN); shared with serving")
    parser.add_argument("--max-jobs", type=int, default=1, help="jobs running at once (default 1)")
    parser.add_argument("--max-upload-mb", type=int, default=64, help="largest upload (default 64)")
    parser.set_defaults(handler=_run)
    return parser
