"""ASGI guard in front of the REST app: bearer-token auth and the request body size limit.

```python
app = GuardMiddleware(app, max_body_bytes=16 << 20, auth_token="s3cret", open_paths=("/healthz",))
```
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

__all__ = ["GuardMiddleware"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Refuses unauthenticated requests (401) and bodies over `max_body_bytes` (413).

    The body is read up front (at most `max_body_bytes`) and replayed to the app,
    so an oversized upload is refused before any of it is parsed.

    Args:
        app: the ASGI app guarded.
        max_body_bytes: largest body accepted.
        auth_token: the bearer token, or None for no auth.
        open_paths: paths reachable without the token.
    """

    def __init__(self, app: Any, max_body_bytes: int, auth_token: str | None, open_paths: tuple[str, ...] = ("/healthz",)):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._token = f"Bearer {auth_token}".encode() if auth_token else None
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self._token is not None and scope["path"] not in self._open_paths and scope.get("method") != "OPTIONS":
            if not hmac.compare_digest(headers.get(b"authorization", b""), self._token):
                await _send_error(
                    send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                await _send_error(send, 400, f"invalid Content-Length header {declared[:32]!r}")
                return
            if too_big:
                await _send_error(send, 413, f"request body of {int(declared)} bytes exceeds the limit of {self.max_body_bytes}")
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_error(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
