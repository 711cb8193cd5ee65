"""Loading, resizing and encoding single images the way DIGITS stores them.

Only Pillow and numpy are used here, so the functions are cheap to run in
worker processes.

Example:

```python
from vispipe.configs import ImageOptions

options = ImageOptions(height=32, width=32, channels=3, resize_mode="crop")
array, note = load_image("photos/cat/1.jpg", options)  # uint8 (32, 32, 3)
data = encode_image(array, "png")
```
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vispipe.configs import ENCODINGS, RESIZE_MODES, ImageOptions
from vispipe.data.format import ImageInput

__all__ = [
    "MAX_PIXELS",
    "PNG_COMPRESS_LEVEL",
    "ImageError",
    "load_image",
    "resize",
    "encode_image",
    "decode_image",
]

# Larger images are refused before decoding: a small file can claim a size
# whose decoded pixels would not fit in memory.
MAX_PIXELS = 50_000_000

# zlib level 1 (OpenCV's PNG default): on photo-sized images it encodes 3-5x
# faster than Pillow's default 6 for files about 10% larger (bench/README.md).
PNG_COMPRESS_LEVEL = 1

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # shown with width and height swapped


class ImageError(ValueError):
    """A file that cannot be used as an image; says which file and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _open(path: str, target: ImageOptions | ImageInput | None = None) -> Image.Image:
    """Opens and fully decodes `path`, refusing oversized images first.

    Args:
        path: The image file.
        target: When given, a JPEG is decoded straight to the smallest DCT
            scale (1/2, 1/4, 1/8) that `resize` to this target still shrinks.

    Returns:
        The loaded Pillow image.
    """
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror})") from error
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns between its own limit and twice it; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(path, f"decompression bomb: {error}") from error
        except UnidentifiedImageError as error:
            raise ImageError(path, "not an image (unrecognized format)") from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageError(path, f"corrupt image header: {error}") from error
        width, height = image.size
        if width * height > MAX_PIXELS:
            image.close()
            raise ImageError(
                path, f"decompression bomb: {width}x{height} pixels "
                f"(more than MAX_PIXELS={MAX_PIXELS})"
            )
        try:
            if target is not None:
                _draft(image, target)
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            # Pillow reports truncated and corrupt data with these types.
            image.close()
            raise ImageError(path, f"corrupt or truncated image: {error}") from error
    return image


def _draft(image: Image.Image, target: ImageOptions | ImageInput) -> None:
    """Asks libjpeg to decode at the smallest scale still >= what `resize` needs.

    libjpeg's scaled IDCT decodes a JPEG at 1/2, 1/4 or 1/8 of its size for a
    fraction of the cost of a full decode; Pillow's `draft` picks the largest
    such reduction that leaves the image at least the requested size, so the
    final bilinear resize still only shrinks (PSNR against a full decode is
    in bench/README.md). Other formats are left alone.
    """
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    transposed = image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS
    if transposed:
        width, height = height, width
    needed_height, needed_width = _scaled_size(
        height, width, target.height, target.width, target.resize_mode
    )
    if transposed:
        needed_height, needed_width = needed_width, needed_height
    image.draft(None, (needed_width, needed_height))


def _to_8bit(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Brings 1-bit, 16-bit, 32-bit and float grayscale to 8-bit 'L'."""
    if image.mode == "1":
        return image.convert("L"), "1-bit->8-bit"
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        # 'I' holds 16-bit PNGs too; values above 255 mean a 16-bit range.
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0
            note = "16-bit->8-bit"
        else:
            note = "32-bit->8-bit"
        return _gray_from(values), note
    if image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        # Floats in [0, 1] are intensities; anything else is on the 0-255 scale.
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return _gray_from(values), "float->8-bit"
    return image, None


def _gray_from(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _on_white(image: Image.Image, mode: str) -> Image.Image:
    """Composites an image with transparency onto a white background."""
    background = Image.new(mode, image.size, 255 if mode == "L" else (255, 255, 255))
    background.paste(image.convert(mode), mask=image.convert("RGBA").getchannel("A"))
    return background


def _to_l_or_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Converts any Pillow mode to 'L' or 'RGB' (DIGITS' rules), with notes."""
    image, note = _to_8bit(image)
    notes = [note] if note else []
    mode = image.mode
    if mode in ("L", "RGB"):
        return image, notes
    if mode == "LA" or mode == "La":
        return _on_white(image, "L"), notes + ["LA->L (alpha composited on white)"]
    if mode in ("RGBA", "RGBa"):
        return _on_white(image, "RGB"), notes + ["RGBA->RGB (alpha composited on white)"]
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in image.info:
            return _on_white(image, "RGB"), notes + [
                "palette->RGB (alpha composited on white)"
            ]
        return image.convert("RGB"), notes + ["palette->RGB"]
    if mode in _TO_RGB_MODES:
        return image.convert("RGB"), notes + [f"{mode}->RGB"]
    raise ImageError(
        image.filename if hasattr(image, "filename") else "<image>",
        f"unsupported image mode {mode!r}",
    )


def load_image(path: str, options: ImageOptions | ImageInput) -> tuple[np.ndarray, str | None]:
    """Loads an image file as the dataset stores it.

    The file is decoded with Pillow (a JPEG much larger than the target at
    1/2, 1/4 or 1/8 scale by libjpeg, see `_draft`), rotated by its EXIF orientation,
    converted to 8-bit grayscale or RGB (transparency composited on white),
    then resized with `resize`.

    Args:
        path: The image file.
        options: Target size, channels and resize mode (a dataset's
            `ImageOptions`, or the `ImageInput` of a dataset or run).

    Returns:
        `(array, note)`: a uint8 array of shape
        `(options.height, options.width, options.channels)`, and a note on the
        conversion made (e.g. `"CMYK->RGB"`, `"16-bit->8-bit"`,
        `"gray->RGB"`) or `None` when the file was already 8-bit L/RGB with
        the wanted channels.

    Raises:
        ImageError: The file is empty, not an image, corrupt, truncated, or
            larger than `MAX_PIXELS`.

    Example:

    >>> array, note = load_image("cat.png", ImageOptions(32, 32, 3))
    """
    image = _open(path, options)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as error:
        raise ImageError(path, f"unreadable EXIF orientation: {error}") from error
    try:
        image, notes = _to_l_or_rgb(image)
    except ImageError as error:
        raise ImageError(path, error.reason) from error
    target = "L" if options.channels == 1 else "RGB"
    if image.mode != target:
        notes.append("RGB->gray" if target == "L" else "gray->RGB")
        image = image.convert(target)
    array = resize(image, options.height, options.width, options.resize_mode)
    return array, ", ".join(notes) or None


def _round(value: float) -> int:
    # DIGITS ran on Python 2, whose round() goes half away from zero.
    return int(math.floor(value + 0.5))


def _resized(image: Image.Image, height: int, width: int) -> np.ndarray:
    out = np.asarray(image.resize((width, height), Image.BILINEAR))
    return out.reshape(height, width, len(image.getbands()))


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A Pillow 'L' or 'RGB' image of `image` (itself when it already is one)."""
    if isinstance(image, Image.Image) and image.mode in ("L", "RGB"):
        return image
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(
            f"resize: expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {array.shape}."
        )
    return Image.fromarray(array, "L" if array.ndim == 2 else "RGB")


def _noise(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # DIGITS fills with random noise; seeding from the pixels keeps datasets
    # reproducible while different images still get different noise.
    rng = np.random.default_rng(zlib.crc32(array.tobytes()))
    return rng.integers(0, 255, size=shape, dtype=np.uint8)


def resize(
    image: Image.Image | np.ndarray, height: int, width: int, mode: str = "squash"
) -> np.ndarray:
    """Resizes an image with the semantics of DIGITS' `resize_image`.

    - `squash`: stretch to `height` x `width`, ignoring the aspect ratio.
    - `crop`: scale so the image covers the target, then cut the overhanging
      ends of the long side (the center is kept).
    - `fill`: scale so the image fits inside the target, then fill the bands
      left on the short side with random noise (seeded by the image, so the
      result is deterministic).
    - `half_crop`: scale by the mean of the two ratios, crop the long side and
      fill the short side.

    Args:
        image: A Pillow image in mode 'L' or 'RGB', or a uint8 array of shape
            (H, W), (H, W, 1) or (H, W, 3).
        height: Target height.
        width: Target width.
        mode: One of `RESIZE_MODES`.

    Returns:
        A uint8 array of shape (height, width, channels).

    Example:

    >>> resize(np.zeros((10, 20), np.uint8), 10, 10, "crop").shape
    (10, 10, 1)
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode: expected one of {RESIZE_MODES}, got {mode!r}.")
    if height <= 0 or width <= 0:
        raise ValueError(f"resize: expected a positive size, got {height}x{width}.")
    # Pillow resizes its own image; a decoded image is not copied to numpy first.
    picture = _as_image(image)
    in_width, in_height = picture.size
    if (in_height, in_width) == (height, width):
        return np.asarray(picture).reshape(height, width, len(picture.getbands()))
    new_height, new_width = _scaled_size(in_height, in_width, height, width, mode)
    array = _resized(picture, new_height, new_width)
    if mode in ("crop", "half_crop"):
        array = _center_crop(array, height, width)
    if mode in ("fill", "half_crop"):
        array = _fill(array, height, width)
    return array


def _scaled_size(
    in_height: int, in_width: int, height: int, width: int, mode: str
) -> tuple[int, int]:
    """The size `resize` scales an image to, before any crop or fill.

    Args:
        in_height, in_width: The image's size.
        height, width: The target size.
        mode: One of `RESIZE_MODES`.

    Returns:
        `(height, width)` of the scaled image: the target for `squash` (and
        when the aspect ratios match), else at least the target on the side
        `crop` cuts and at most it on the side `fill` pads (even margins).
    """
    width_ratio = in_width / width
    height_ratio = in_height / height
    if mode == "squash" or width_ratio == height_ratio:
        return height, width
    wide = width_ratio > height_ratio  # relatively wider than the target
    if mode == "crop":
        if wide:
            return height, max(width, _round(in_width / height_ratio))
        return max(height, _round(in_height / width_ratio)), width
    if mode == "fill":
        if wide:
            new_height = max(1, _round(in_height / width_ratio))
            return new_height + (height - new_height) % 2, width
        new_width = max(1, _round(in_width / height_ratio))
        return height, new_width + (width - new_width) % 2
    # half_crop: the mean ratio leaves the long side over, the short under.
    ratio = (width_ratio + height_ratio) / 2
    new_height = max(1, _round(in_height / ratio))
    new_width = max(1, _round(in_width / ratio))
    if wide:
        return new_height + (height - new_height) % 2, new_width
    return new_height, new_width + (width - new_width) % 2


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Cuts the sides longer than the target evenly from both ends."""
    top = _round((array.shape[0] - height) / 2) if array.shape[0] > height else 0
    left = _round((array.shape[1] - width) / 2) if array.shape[1] > width else 0
    return array[top:top + height, left:left + width]


def _fill(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pads the side shorter than the target with seeded noise on both ends."""
    channels = array.shape[2]
    if array.shape[0] < height:
        band = _noise(array, ((height - array.shape[0]) // 2, width, channels))
        return np.concatenate([band, array, band], axis=0)
    if array.shape[1] < width:
        band = _noise(array, (height, (width - array.shape[1]) // 2, channels))
        return np.concatenate([band, array, band], axis=1)
    return array


def encode_image(array: np.ndarray, encoding: str, jpeg_quality: int = 90) -> bytes:
    """Encodes a uint8 (H, W, C) image for a TFRecord.

    Args:
        array: uint8 array of shape (H, W, 1) or (H, W, 3).
        encoding: `"png"`, `"jpeg"` or `"raw"` (the HWC bytes as they are).
        jpeg_quality: JPEG quality, 1-100.

    Returns:
        The encoded bytes.

    Example:

    >>> data = encode_image(np.zeros((8, 8, 1), np.uint8), "png")
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}.")
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if encoding == "raw":
        return array.tobytes()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def decode_image(
    data: bytes, encoding: str, height: int, width: int, channels: int
) -> np.ndarray:
    """Decodes bytes made by `encode_image` back to a uint8 (H, W, C) array.

    Example:

    >>> decode_image(data, "png", 8, 8, 1).shape
    (8, 8, 1)
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}.")
    if encoding == "raw":
        expected = height * width * channels
        if len(data) != expected:
            raise ValueError(
                f"raw image: expected {expected} bytes for {height}x{width}x{channels}, "
                f"got {len(data)}."
            )
        return np.frombuffer(data, np.uint8).reshape(height, width, channels)
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array.reshape(height, width, channels)
