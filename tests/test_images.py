"""Loading, converting, resizing and encoding single images (vispipe.data.images)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from vispipe.configs import ImageOptions
from vispipe.data import images
from vispipe.data.images import ImageError, decode_image, encode_image, load_image, resize


def _stripes(height: int = 10, width: int = 30) -> np.ndarray:
    """Gray image whose left, middle and right thirds are 0, 128 and 255."""
    array = np.zeros((height, width), np.uint8)
    array[:, width // 3: 2 * width // 3] = 128
    array[:, 2 * width // 3:] = 255
    return array


@pytest.mark.parametrize("mode", ["squash", "crop", "fill", "half_crop"])
@pytest.mark.parametrize("shape", [(10, 30), (30, 10), (7, 31, 3), (1, 50), (28, 28)])
@pytest.mark.parametrize("target", [(8, 8), (9, 13), (13, 9)])
def test_resize_gives_target_shape_in_every_mode(mode, shape, target):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    out = resize(array, *target, mode)
    channels = shape[2] if len(shape) == 3 else 1
    assert out.shape == (*target, channels)
    assert out.dtype == np.uint8


def test_resize_squash_ignores_aspect_ratio():
    out = resize(_stripes(), 10, 3, "squash")[:, :, 0]
    # Each third of the width becomes one column (bilinear blends the edges).
    assert (out[:, 0] < 40).all()
    assert (out[:, 1] == 128).all()
    assert (out[:, 2] > 215).all()


def test_resize_crop_keeps_the_center():
    out = resize(_stripes(), 10, 10, "crop")
    assert (out == 128).all()


def test_resize_fill_pads_the_short_side_with_seeded_noise():
    array = np.full((10, 30), 128, np.uint8)
    out = resize(array, 10, 10, "fill")
    # 10x30 -> 4x10 (3.33 rounded, made even), then 3 noise rows above and below.
    assert (out[3:7] == 128).all()
    top, bottom = out[:3], out[7:]
    np.testing.assert_array_equal(top, bottom)  # DIGITS uses one noise band twice
    assert len(np.unique(top)) > 5
    np.testing.assert_array_equal(out, resize(array, 10, 10, "fill"))


def test_resize_half_crop_crops_the_long_side_and_fills_the_short_one():
    out = resize(_stripes(), 10, 10, "half_crop")
    # Mean ratio 2: 10x30 -> 6x15, 3 columns cut from each end (rounded),
    # 2 noise rows above and below.
    middle = out[2:8, :, 0]
    assert middle[:, 0] == pytest.approx(0, abs=1)
    assert (middle[:, 4:6] == 128).all()
    assert middle[:, -1] == pytest.approx(255, abs=1)
    np.testing.assert_array_equal(out[:2], out[8:])


def test_resize_same_size_returns_the_pixels_unchanged():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    np.testing.assert_array_equal(resize(array, 3, 4, "crop"), array)


def test_resize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="resize mode: expected one of"):
        resize(np.zeros((4, 4), np.uint8), 2, 2, "stretch")


# --- loading and conversions --------------------------------------------------

def _save(image: Image.Image, path, **kwargs) -> str:
    image.save(path, **kwargs)
    return str(path)


def test_load_image_resizes_and_keeps_gray(tmp_path):
    path = _save(Image.fromarray(_stripes()), tmp_path / "g.png")
    array, note = load_image(path, ImageOptions(height=10, width=10, resize_mode="crop"))
    assert array.shape == (10, 10, 1)
    assert (array == 128).all()
    assert note is None


def test_load_image_converts_gray_to_rgb_and_rgb_to_gray(tmp_path):
    gray = _save(Image.fromarray(_stripes()), tmp_path / "g.png")
    array, note = load_image(gray, ImageOptions(height=10, width=30, channels=3))
    assert array.shape == (10, 30, 3)
    assert note == "gray->RGB"
    np.testing.assert_array_equal(array[:, :, 0], array[:, :, 2])

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: luma 0.587 * 255
    path = _save(Image.fromarray(rgb), tmp_path / "c.png")
    array, note = load_image(path, ImageOptions(height=4, width=4, channels=1))
    assert note == "RGB->gray"
    assert array.shape == (4, 4, 1)
    assert int(array[0, 0, 0]) == pytest.approx(150, abs=1)


def test_load_image_converts_cmyk(tmp_path):
    path = _save(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), tmp_path / "c.jpg")
    array, note = load_image(path, ImageOptions(height=6, width=6, channels=3))
    assert note == "CMYK->RGB"
    red, green, blue = array[3, 3].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_load_image_scales_16_bit_to_8_bit(tmp_path):
    values = np.array([[0, 65535], [32896, 65535]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    array, note = load_image(path, ImageOptions(height=2, width=2, channels=1))
    assert note == "16-bit->8-bit"
    np.testing.assert_array_equal(array[:, :, 0], [[0, 255], [128, 255]])


def test_load_image_scales_float_images(tmp_path):
    values = np.array([[0.0, 1.0], [0.5, 1.0]], np.float32)
    path = _save(Image.fromarray(values, "F"), tmp_path / "f.tif")
    array, note = load_image(path, ImageOptions(height=2, width=2, channels=1))
    assert note == "float->8-bit"
    np.testing.assert_array_equal(array[:, :, 0], [[0, 255], [128, 255]])


def test_load_image_converts_palette_and_1_bit(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 255] + [0] * 765)
    path = _save(palette, tmp_path / "p.png")
    array, note = load_image(path, ImageOptions(height=4, width=4, channels=3))
    assert note == "palette->RGB"
    assert tuple(array[0, 0]) == (0, 0, 255)

    path = _save(Image.new("1", (4, 4), 1), tmp_path / "b.png")
    array, note = load_image(path, ImageOptions(height=4, width=4, channels=1))
    assert note == "1-bit->8-bit"
    assert (array == 255).all()


def test_load_image_composites_alpha_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red; the rest is transparent black
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    array, note = load_image(path, ImageOptions(height=2, width=2, channels=3))
    assert note == "RGBA->RGB (alpha composited on white)"
    assert tuple(array[0, 0]) == (255, 0, 0)
    assert tuple(array[1, 1]) == (255, 255, 255)

    path = _save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png")
    array, note = load_image(path, ImageOptions(height=2, width=2, channels=1))
    assert note == "LA->L (alpha composited on white)"
    assert (array == 255).all()


def test_load_image_applies_exif_orientation(tmp_path):
    array = np.zeros((2, 4), np.uint8)
    array[:, 2:] = 255  # left half black, right half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    path = _save(image, tmp_path / "o.png", exif=exif)
    out, _ = load_image(path, ImageOptions(height=4, width=2, channels=1))
    assert (out[:2] == 0).all() and (out[2:] == 255).all()



# --- JPEG draft (DCT-scaled) decoding -------------------------------------------

def _photo_jpeg(path, width: int = 1024, height: int = 768, orientation: int = 1) -> str:
    """A photo-sized JPEG (quality 90): smooth shapes plus sensor-like noise."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    scene = np.stack([128 + 100 * np.sin(6 * x + 3 * y), 255 * x, 255 * (1 - y)], axis=-1)
    noisy = np.clip(scene + rng.normal(0, 4, scene.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(path, "JPEG", quality=90, exif=exif)
    return str(path)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("target, mode, decoded", [
    ((128, 128), "squash", (256, 192)),   # 1/4: still >= 128x128
    ((128, 128), "crop", (256, 192)),     # crop scales to 171x128 first
    ((224, 224), "squash", (512, 384)),   # 1/4 would be 256x192 < 224: 1/2
    ((512, 512), "squash", (1024, 768)),  # no reduction leaves 512 rows
])
def test_large_jpeg_decodes_at_the_smallest_dct_scale_the_target_allows(
    tmp_path, target, mode, decoded
):
    path = _photo_jpeg(tmp_path / "photo.jpg")
    options = ImageOptions(height=target[0], width=target[1], channels=3, resize_mode=mode)
    assert images._open(path, options).size == decoded
    assert images._open(path).size == (1024, 768)


def test_draft_decoding_is_not_applied_to_other_formats(tmp_path):
    path = tmp_path / "photo.png"
    Image.open(_photo_jpeg(tmp_path / "photo.jpg")).save(path)
    assert images._open(str(path), ImageOptions(height=64, width=64, channels=3)).size == (1024, 768)


@pytest.mark.parametrize("mode", ["squash", "crop", "fill", "half_crop"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_draft_decoding_matches_a_full_decode(tmp_path, mode, orientation):
    path = _photo_jpeg(tmp_path / "photo.jpg", orientation=orientation)
    options = ImageOptions(height=128, width=96, channels=3, resize_mode=mode)
    array, note = load_image(path, options)
    with Image.open(path) as full:
        reference = resize(ImageOps.exif_transpose(full).convert("RGB"), 128, 96, mode)
    assert note is None
    assert array.shape == reference.shape == (128, 96, 3)
    if mode in ("squash", "crop"):  # fill's noise bands are seeded by the pixels
        assert _psnr(array, reference) > 38
    else:
        inner = slice(30, -30)  # inside the bands (at most 28 rows here)
        assert _psnr(array[inner, inner], reference[inner, inner]) > 38

# --- unusable files -------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG file claiming `width` x `height` gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(width + 1))) + _chunk(b"IEND", b""))


def _reason(path: str) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(path, ImageOptions())
    assert caught.value.path == path
    assert path in str(caught.value)
    return caught.value.reason


def test_unusable_files_raise_image_error_with_reason(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _reason(str(empty)) == "empty file (0 bytes)"

    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    assert _reason(str(text)) == "not an image (unrecognized format)"

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    assert _reason(str(truncated)).startswith("corrupt or truncated image")

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(data[:60] + bytes(len(data) - 60))
    assert _reason(str(corrupt)).startswith("corrupt or truncated image")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 8000 x 8000 = 64 megapixels, over MAX_PIXELS, under Pillow's own limit.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(8000, 8000))
    assert _reason(str(bomb)).startswith("decompression bomb: 8000x8000 pixels")

    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(100_000, 100_000))
    assert _reason(str(huge)).startswith("decompression bomb")


def test_max_pixels_applies_to_real_images(tmp_path, monkeypatch):
    path = _save(Image.new("L", (20, 20)), tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert _reason(path).startswith("decompression bomb: 20x20 pixels")


# --- encodings ------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("encoding", ["png", "raw", "jpeg"])
def test_encode_decode_round_trip(encoding, channels):
    rng = np.random.default_rng(1)
    # A smooth image, so that JPEG's loss stays small.
    base = np.linspace(0, 255, 16 * 16).reshape(16, 16, 1)
    array = np.clip(base + rng.normal(0, 2, (16, 16, channels)), 0, 255).astype(np.uint8)
    data = encode_image(array, encoding, jpeg_quality=95)
    out = decode_image(data, encoding, 16, 16, channels)
    assert out.shape == (16, 16, channels)
    if encoding == "jpeg":
        assert data[:2] == b"\xff\xd8"
        assert np.abs(out.astype(int) - array).mean() < 4
    else:
        np.testing.assert_array_equal(out, array)
    if encoding == "png":
        assert data[:4] == b"\x89PNG"
