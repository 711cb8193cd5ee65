"""Training-time augmentation applied to whole batches inside `tf.data`.

`make_augmenter` turns an `AugmentConfig` into a function of a float32 batch
`[B, H, W, C]` on the 0-255 scale and a per-batch integer key. Every random
draw is a stateless op seeded from `(seed, key)`, so a pipeline that feeds a
reproducible key stream gets reproducible augmentation, and the function can
run in parallel `Dataset.map` calls without shared state.

Order: flips, 90-degree rotations, one projective transform per image
(rotation, zoom and translation combined), pad-and-crop, then brightness,
contrast, hue, saturation and noise. The result is clipped to [0, 255].

Example:

```python
augment = make_augmenter(AugmentConfig(flip_horizontal=True, rotation=10),
                         image_shape=(28, 28, 1), seed=42)
ds = ds.batch(64).map(lambda x, y: (augment(x, tf.constant(0)), y))
```
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import tensorflow as tf

from vispipe.configs import AugmentConfig

__all__ = ["Augmenter", "make_augmenter", "validate_augment_config"]

# `augment(images, key)`: images float32 [B, H, W, C] on 0-255, key an int scalar.
Augmenter = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# Field -> (low, high, high is inclusive) for the numeric fields.
_RANGES = {
    "rotation": (0.0, 180.0, True),
    "zoom": (0.0, 1.0, False),
    "translate": (0.0, 1.0, False),
    "brightness": (0.0, 255.0, True),
    "contrast": (0.0, 1.0, True),
    "hue": (0.0, 0.5, True),
    "saturation": (0.0, 1.0, True),
}
_BOOLS = ("flip_horizontal", "flip_vertical", "rotate90")
_NUM_OPS = 10  # Independent seeds split from each batch seed, one per op.


def validate_augment_config(
    config: AugmentConfig, image_shape: tuple[int, int, int]
) -> None:
    """Checks every field of `config` against its range and the image shape.

    Args:
        config: The augmentation settings.
        image_shape: `(height, width, channels)` of the images.

    Raises:
        ValueError: A field out of range, named with its value, or an op the
            images cannot take (`rotate90` on non-square images, `hue` or
            `saturation` on images that are not RGB).
    """
    height, width, channels = image_shape
    for name in _BOOLS:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise ValueError(f"augment.{name}: expected true or false, got {value!r}.")
    for name, (low, high, inclusive) in _RANGES.items():
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and low <= value and (value <= high if inclusive else value < high)
        if not ok:
            bracket = "]" if inclusive else ")"
            raise ValueError(
                f"augment.{name}: expected a number in [{low:g}, {high:g}{bracket}, "
                f"got {value!r}."
            )
    noise = config.noise_std
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"augment.noise_std: expected a number >= 0, got {noise!r}.")
    pad = config.crop_padding
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(
            f"augment.crop_padding: expected an integer >= 0 (pixels), got {pad!r}."
        )
    if config.rotate90 and height != width:
        raise ValueError(
            f"augment.rotate90: needs square images, got {height}x{width}."
        )
    for name in ("hue", "saturation"):
        if getattr(config, name) and channels != 3:
            raise ValueError(
                f"augment.{name}: needs 3-channel (RGB) images, got {channels} "
                "channel(s)."
            )


def make_augmenter(
    config: AugmentConfig, image_shape: tuple[int, int, int], seed: int
) -> Augmenter:
    """Builds a batched, graph-compatible augmentation function.

    Args:
        config: Which ops to apply and how strongly (see `AugmentConfig`).
        image_shape: `(height, width, channels)` of the images.
        seed: Base seed; with the per-batch `key` it fixes every random draw.

    Returns:
        `augment(images, key)`: `images` float32 `[B, H, W, C]` on the 0-255
        scale, `key` an integer scalar tensor that differs between batches
        (e.g. drawn from `tf.data.Dataset.random`). Returns the augmented
        batch, clipped to [0, 255]. When `config` enables nothing, the
        function returns `images` unchanged.

    Raises:
        ValueError: An invalid `config` (see `validate_augment_config`).

    Example:

    ```python
    augment = make_augmenter(AugmentConfig(crop_padding=4), (32, 32, 3), seed=0)
    out = augment(tf.zeros([8, 32, 32, 3]), tf.constant(7))
    ```
    """
    validate_augment_config(config, image_shape)
    if not config.enabled:
        return lambda images, key: images
    cfg = dataclasses.replace(config)  # Later edits by the caller do not leak in.
    base_seed = int(seed)

    def augment(images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        batch_seed = tf.random.experimental.stateless_fold_in(
            tf.constant([base_seed, 0], tf.int64), tf.cast(key, tf.int64)
        )
        seeds = iter(tf.unstack(tf.random.experimental.stateless_split(batch_seed, _NUM_OPS)))
        batch = tf.shape(images)[0]
        x = tf.convert_to_tensor(images, tf.float32)
        if cfg.flip_horizontal:
            x = _random_flip(x, axis=2, seed=next(seeds), batch=batch)
        if cfg.flip_vertical:
            x = _random_flip(x, axis=1, seed=next(seeds), batch=batch)
        if cfg.rotate90:
            x = _random_rot90(x, seed=next(seeds), batch=batch)
        if cfg.rotation or cfg.zoom or cfg.translate:
            x = _random_affine(x, cfg, image_shape, seed=next(seeds), batch=batch)
        if cfg.crop_padding:
            x = _random_pad_crop(x, cfg.crop_padding, seed=next(seeds), batch=batch)
        if cfg.brightness:
            delta = _uniform(batch, -cfg.brightness, cfg.brightness, next(seeds))
            x = x + delta
        if cfg.contrast:
            factor = _uniform(batch, 1 - cfg.contrast, 1 + cfg.contrast, next(seeds))
            mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = (x - mean) * factor + mean
        if cfg.hue or cfg.saturation:
            x = _random_hsv(x, cfg, next(seeds), next(seeds), batch=batch)
        if cfg.noise_std:
            x = x + tf.random.stateless_normal(
                tf.shape(x), seed=next(seeds), stddev=cfg.noise_std
            )
        return tf.clip_by_value(x, 0.0, 255.0)

    return augment


def _uniform(batch: tf.Tensor, low: float, high: float, seed: tf.Tensor) -> tf.Tensor:
    """One draw per image, shaped `[B, 1, 1, 1]` to broadcast over pixels."""
    values = tf.random.stateless_uniform([batch], seed=seed, minval=low, maxval=high)
    return tf.reshape(values, [-1, 1, 1, 1])


def _per_image(mask: tf.Tensor, if_true: tf.Tensor, if_false: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.reshape(mask, [-1, 1, 1, 1]), if_true, if_false)


def _random_flip(x: tf.Tensor, axis: int, seed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    flip = tf.random.stateless_uniform([batch], seed=seed) < 0.5
    return _per_image(flip, tf.reverse(x, axis=[axis]), x)


def _random_rot90(x: tf.Tensor, seed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    k = tf.random.stateless_uniform([batch], seed=seed, minval=0, maxval=4, dtype=tf.int32)
    out = x
    for turns in (1, 2, 3):
        out = _per_image(tf.equal(k, turns), tf.image.rot90(x, k=turns), out)
    return out


def _random_affine(
    x: tf.Tensor,
    cfg: AugmentConfig,
    image_shape: tuple[int, int, int],
    seed: tf.Tensor,
    batch: tf.Tensor,
) -> tf.Tensor:
    """Rotation, zoom and translation as one bilinear transform per image."""
    height, width, _ = image_shape
    angle_seed, zoom_seed, tx_seed, ty_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    max_angle = cfg.rotation * math.pi / 180.0
    angle = tf.random.stateless_uniform([batch], angle_seed, -max_angle, max_angle)
    scale = tf.random.stateless_uniform([batch], zoom_seed, 1 - cfg.zoom, 1 + cfg.zoom)
    tx = tf.random.stateless_uniform([batch], tx_seed, -cfg.translate, cfg.translate) * width
    ty = tf.random.stateless_uniform([batch], ty_seed, -cfg.translate, cfg.translate) * height
    # The op maps each output pixel back to an input pixel, so build the
    # inverse of "scale and rotate about the centre, then shift".
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a0 = tf.cos(angle) / scale
    a1 = tf.sin(angle) / scale
    b0, b1 = -a1, a0
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0),
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def _random_pad_crop(x: tf.Tensor, pad: int, seed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """Zero-pads by `pad` pixels and crops back at a random offset per image.

    An integer shift with zero fill is exactly that, without materialising
    the padded batch.
    """
    shift = tf.random.stateless_uniform(
        [batch, 2], seed=seed, minval=-pad, maxval=pad + 1, dtype=tf.int32
    )
    shift = tf.cast(shift, tf.float32)
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    transforms = tf.stack(
        [ones, zeros, shift[:, 0], zeros, ones, shift[:, 1], zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.shape(x)[1:3],
        fill_value=tf.constant(0.0),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )


def _random_hsv(
    x: tf.Tensor,
    cfg: AugmentConfig,
    hue_seed: tf.Tensor,
    saturation_seed: tf.Tensor,
    batch: tf.Tensor,
) -> tf.Tensor:
    """Hue shift and saturation scaling for a whole RGB batch at once."""
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
    hue, saturation, value = tf.unstack(hsv, axis=-1)
    if cfg.hue:
        delta = _uniform(batch, -cfg.hue, cfg.hue, hue_seed)[..., 0]
        hue = tf.math.floormod(hue + delta, 1.0)
    if cfg.saturation:
        factor = _uniform(batch, 1 - cfg.saturation, 1 + cfg.saturation, saturation_seed)
        saturation = tf.clip_by_value(saturation * factor[..., 0], 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1)) * 255.0
