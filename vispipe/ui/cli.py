"""The `vispipe ui` verb: the web UI on one port.

```
vispipe ui --port 5000 --data-root /data/images --max-jobs 2
```

A token is required by default: a fresh one each start, printed in the URL
to open (as Jupyter does), or a fixed one from `$VISPIPE_UI_TOKEN`.
`--no-token` turns that off for a trusted network; `--allowed-host NAME`
adds a name (besides localhost and the bound address) that browsers may use.

Example:

```python
verbs = parser.add_subparsers(dest="verb")
add_ui_parser(verbs)
```
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
from typing import Any

__all__ = ["add_ui_parser"]

_WILDCARDS = ("0.0.0.0", "::", "")


def _allowed_hosts(bound: str, extra: list[str]) -> list[str]:
    """Localhost names, the bound address (this machine's names when bound to all)
    and the `--allowed-host` names."""
    from vispipe.ui.settings import LOCAL_HOSTS

    names = [*LOCAL_HOSTS, *extra]
    if bound in _WILDCARDS:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(bound)
    return list(dict.fromkeys(n.lower() for n in names))


def _urls(host: str, port: int, token: str | None) -> list[str]:
    query = f"?token={token}" if token else ""
    hosts = ["127.0.0.1", socket.gethostname()] if host in _WILDCARDS else [host]
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}/{query}" for h in hosts]


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from vispipe.ui.app import create_app
    from vispipe.ui.settings import UISettings, new_token

    for root in args.data_root:
        if not os.path.isdir(root):
            raise ValueError(f"--data-root: expected an existing folder, got {root!r}.")
    if args.no_token and args.token:
        raise ValueError("--no-token: expected no --token (or $VISPIPE_UI_TOKEN) with it.")
    token = None if args.no_token else (args.token or new_token())
    settings = UISettings(data_roots=args.data_root, home=args.home or "", token=token,
                          allowed_hosts=_allowed_hosts(args.host, args.allowed_host),
                          max_jobs=args.max_jobs, max_upload_bytes=args.max_upload_mb << 20)
    print(f"vispipe ui (data roots: {', '.join(settings.data_roots) or 'none'}; home "
          f"{settings.home}). Open:", flush=True)
    for url in _urls(args.host, args.port, token):
        print(f"    {url}", flush=True)
    if token is None:
        print(f"vispipe ui: --no-token: anyone who can reach port {args.port} on "
              f"{args.host} can use this UI as {getpass.getuser()}: read images in the data "
              "roots, start jobs, and run custom network code. Cross-site requests and "
              "unknown Host names are still refused.", flush=True)
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
                        help="require this token (default $VISPIPE_UI_TOKEN, else a new random "
                             "one, printed in the URL); shared with serving")
    parser.add_argument("--no-token", action="store_true",
                        help="require no token: only on a network where everyone who can "
                             "reach the port may run code as you")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a name browsers may use for this server besides localhost and "
                             "--host (repeatable; '*' for any, which gives up the DNS "
                             "rebinding check)")
    parser.add_argument("--max-jobs", type=int, default=1, help="jobs running at once (default 1)")
    parser.add_argument("--max-upload-mb", type=int, default=64, help="largest upload (default 64)")
    parser.set_defaults(handler=_run)
    return parser
