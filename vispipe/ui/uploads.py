"""Uploads: request bodies limited while they stream in, uploaded images checked and stored.

`BodyLimit` refuses a body over the limit as soon as its `Content-Length`
says so, or once that many bytes have arrived: a 100 MB upload is never
stored whole. `read_limited` and `save_image` then check one uploaded file:
its size, that it is an image of a known type, and that its pixel count is
one Pillow may decode (a small PNG can declare 20000x20000 pixels).

Example:

```python
app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
data = await read_limited(upload, settings.max_upload_bytes)
path = save_image(upload.filename, data, settings)
```
"""

from __future__ import annotations

import io
import os
import uuid

from fastapi import HTTPException, UploadFile
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vispipe.ui.settings import UISettings

__all__ = ["FORM_OVERHEAD", "MAX_PIXELS", "IMAGE_TYPES", "BodyLimit", "read_limited",
           "save_image"]

# Room for a form's other fields (a custom network's code, say) besides its file.
FORM_OVERHEAD = 1 << 20
# Pillow's own warning threshold: about 9500x9500 pixels, 268 MB as RGB.
MAX_PIXELS = 89_478_485
IMAGE_TYPES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif",
               "WEBP": ".webp", "PPM": ".ppm"}


def _too_large(limit: int, got: str) -> HTTPException:
    return HTTPException(413, f"The request body is {got}; expected at most {limit} bytes "
                              "(start `vispipe ui --max-upload-mb N` for larger uploads).")


class BodyLimit:
    """ASGI middleware: refuses (413) request bodies over `max_bytes` while they stream.

    Args:
        app: The application.
        max_bytes: The largest body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # Refused before a byte of it is read, and before any code runs.
            error = _too_large(self.max_bytes, f"{declared} bytes")
            await PlainTextResponse(error.detail, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # A body sent without Content-Length, in chunks.
                raise _too_large(self.max_bytes, f"over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes; HTTP 413 past `limit` (reads at most `limit + 1` bytes)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"Upload {upload.filename!r} is over {limit} bytes; expected "
                                 f"at most {limit}.")
    return data


def save_image(filename: str | None, data: bytes, settings: UISettings) -> str:
    """Checks an uploaded image and stores it under `<home>/uploads`; returns its path.

    Args:
        filename: The upload's name (shown in errors only: the stored name is made here).
        data: Its bytes.
        settings: The UI settings (upload limit, home).

    Raises:
        HTTPException: 413 over the size limit, 415 not an image of a known
            type, 400 more pixels than `MAX_PIXELS`.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"Upload {filename!r} is {len(data)} bytes; "
                                 f"expected at most {settings.max_upload_bytes}.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height} pixels")
            image.verify()
            kind = image.format
    except Image.DecompressionBombError as error:
        # Image.open raises it itself past twice Pillow's limit.
        raise HTTPException(400, f"Upload {filename!r} has too many pixels to decode "
                                 f"({error}); expected at most {MAX_PIXELS} pixels (about "
                                 "9500x9500).") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise HTTPException(415, f"Upload {filename!r} is not a readable image: {error}") from None
    if kind not in IMAGE_TYPES:
        raise HTTPException(415, f"Upload {filename!r} is a {kind} image; expected one "
                                 f"of {sorted(IMAGE_TYPES)}.")
    path = os.path.join(settings.folder("uploads"), uuid.uuid4().hex + IMAGE_TYPES[kind])
    with open(path, "wb") as f:
        f.write(data)
    return path
