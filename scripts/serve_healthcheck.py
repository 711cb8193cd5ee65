#!/usr/bin/env python3
"""HEALTHCHECK of the serving image: healthy once every model is loaded.

It finds the TCP ports the server in this container listens on (its own
sockets, from /proc) and asks `/readyz` on them: healthy when one answers 200.
So it follows whatever command line started the server (TF Serving's
`--rest_api_port`, vispipe's older `--port`), with no setting to keep in step
and without importing TensorFlow. The bearer token, if any, comes from
$VISPIPE_SERVE_AUTH_TOKEN or the server's `--auth-token`/`--auth_token`.

Exit status 0: ready; 1: not ready or not answering (Docker's convention).
"""

from __future__ import annotations

import glob
import http.client
import os
import socket
import sys

TIMEOUT_S = 3.0
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _socket_inodes() -> dict[str, list[str]]:
    """Socket inode -> the command line of the process (in this container) holding it."""
    found = {}
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
            if target.startswith("socket:["):
                with open(os.path.join(os.path.dirname(os.path.dirname(fd)), "cmdline"), "rb") as f:
                    found[target[8:-1]] = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:  # a process or descriptor that went away, or another user's
            continue
    return found


def _address(hex_address: str) -> tuple[str, int]:
    """`0100007F:1F90` -> ("127.0.0.1", 8080): 32-bit words in host (little-endian) order."""
    host, port = hex_address.split(":")
    packed = b"".join(int(host[i:i + 8], 16).to_bytes(4, "little") for i in range(0, len(host), 8))
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), int(port, 16)


def listening() -> list[tuple[str, int, list[str]]]:
    """(host to connect to, port, server argv) for every socket this container listens on."""
    owners = _socket_inodes()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        for row in rows:
            if row[3] == _LISTEN and row[9] in owners:
                host, port = _address(row[1])
                host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
                found.append((host, port, owners[row[9]]))
    return found


def _token(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        for flag in ("--auth-token", "--auth_token"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return os.environ.get("VISPIPE_SERVE_AUTH_TOKEN", "")


def ready(host: str, port: int, token: str) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", "/readyz", headers=headers)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):  # not HTTP (gRPC), or not ready
        return False
    finally:
        connection.close()


def main() -> int:
    sockets = listening()
    if any(ready(host, port, _token(argv)) for host, port, argv in sockets):
        return 0
    ports = ", ".join(str(port) for _, port, _ in sockets) or "none"
    print(f"not ready: no listening port answers /readyz with 200 (listening: {ports})",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
