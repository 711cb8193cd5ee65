"""Encoded images in requests: their size read from the header before decoding, and upload decoding.

A 48 KB PNG can declare 20000 x 20000 pixels; decoding it costs gigabytes. The
server reads width, height and frame count from the PNG, JPEG, GIF or BMP
header (a few bytes) and refuses a request whose images would decode to more
than `--max_image_pixels`, before TensorFlow or anything else decodes them.

```python
check_image_pixels(count_pixels([png_bytes]), limit=50_000_000, what="input 'image_bytes'")
image = decode_upload(jpeg_bytes, channels=3)   # uint8 [H, W, 3]; CMYK JPEG, GIF and BMP too
```
"""

from __future__ import annotations

import struct
from typing import Iterable

import numpy as np
import tensorflow as tf

from vispipe.serving.errors import ServingError

__all__ = ["image_header", "count_pixels", "check_image_pixels", "decode_upload"]

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class _Malformed(Exception):
    pass


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _Malformed("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA or length < 2:
            break
        pos += 2 + length
    raise _Malformed("no JPEG start-of-frame before the image data")


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _gif_frames(data: bytes) -> int:
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then data sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            frames += 1
            if pos + 10 > len(data):
                break
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # LZW minimum code size, then image data
        else:
            break
    return max(frames, 1)


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def image_header(data: bytes) -> tuple[str, int, int, int] | None:
    """(format, width, height, frames) from an encoded image's header, or None if it is not one.

    Raises:
        ServingError: INVALID_ARGUMENT for a PNG/JPEG/GIF/BMP signature whose header cannot be read.

    Example:
    >>> image_header(b"GIF89a" + bytes([16, 0, 8, 0, 0, 0, 0]) + b";")
    ('GIF', 16, 8, 1)
    """
    try:
        if data.startswith(_PNG):
            if data[12:16] != b"IHDR":
                raise _Malformed("IHDR chunk expected first")
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", width, height, 1
        if data.startswith(b"\xff\xd8"):
            return ("JPEG", *_jpeg_size(data), 1)
        if data.startswith((b"GIF87a", b"GIF89a")):
            width, height = struct.unpack("<HH", data[6:10])
            return "GIF", width, height, _gif_frames(data)
        if data.startswith(b"BM") and len(data) >= 26:
            return ("BMP", *_bmp_size(data), 1)
    except (_Malformed, struct.error, IndexError) as error:
        raise ServingError("INVALID_ARGUMENT", f"malformed image header ({error or 'truncated'})") from None
    return None


def count_pixels(values: Iterable[bytes]) -> int:
    """Total pixels (width x height x frames) the encoded images among `values` decode to.

    Values that are not PNG, JPEG, GIF or BMP count 0.

    Example:
    >>> count_pixels([b"not an image"])
    0
    """
    total = 0
    for value in values:
        header = image_header(value) if isinstance(value, bytes) and len(value) >= 10 else None
        if header is not None:
            total += header[1] * header[2] * header[3]
    return total


def check_image_pixels(pixels: int, limit: int, what: str) -> None:
    """Refuses (INVALID_ARGUMENT) a request whose images decode to more than `limit` pixels."""
    if pixels > limit:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"{what}: the encoded images decode to {pixels} pixels; this server decodes at most "
            f"{limit} per request (--max_image_pixels)",
        )


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    have = image.shape[-1]
    if channels in (0, have):
        return image
    if have in (2, 4):  # drop alpha
        image, have = image[..., : have - 1], have - 1
    if channels == 1 and have == 3:
        gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
        return tf.cast(tf.clip_by_value(tf.round(gray), 0, 255), tf.uint8).numpy()
    if have == 1 and channels >= 3:
        image = np.repeat(image, 3, axis=-1)
    if channels == 4:
        image = np.concatenate([image, np.full(image.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
    return image


def decode_upload(data: bytes, channels: int) -> np.ndarray:
    """Decodes a PNG, JPEG (CMYK too), GIF (first frame) or BMP to uint8 [H, W, channels].

    Args:
        data: the encoded image.
        channels: 1, 3 or 4, or 0 to keep the image's own.

    Raises:
        ServingError: INVALID_ARGUMENT naming the format problem.

    Example:
    >>> decode_upload(png_bytes, channels=3).shape  # doctest: +SKIP
    (28, 28, 3)
    """
    try:
        image = tf.io.decode_image(data, channels=0, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        reason = str(error).split("}}")[-1].split("[Op:")[0].strip()
        raise ServingError(
            "INVALID_ARGUMENT", f"could not decode the upload as a JPEG, PNG, GIF or BMP image: {reason}"
        ) from None
    return _to_channels(image, channels)
