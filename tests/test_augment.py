"""Batch augmentation: each op does what its name says, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vispipe.configs import AugmentConfig
from vispipe.data.augment import make_augmenter

SHAPE = (8, 8, 3)
BATCH = 32


def _batch(shape=SHAPE, batch=BATCH, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, *shape)).astype(np.float32)


def _run(config: AugmentConfig, images: np.ndarray, key: int = 0, seed: int = 1) -> np.ndarray:
    augment = make_augmenter(config, images.shape[1:], seed=seed)
    return augment(tf.constant(images), tf.constant(key, tf.int64)).numpy()


def test_disabled_config_is_identity():
    images = _batch()
    augment = make_augmenter(AugmentConfig(), SHAPE, seed=0)
    np.testing.assert_array_equal(augment(images, tf.constant(0)), images)


def test_flip_horizontal_mirrors_exactly_or_leaves_alone():
    images = _batch()
    out = _run(AugmentConfig(flip_horizontal=True), images)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_flip_vertical_mirrors_rows():
    images = _batch()
    out = _run(AugmentConfig(flip_vertical=True), images)
    flipped = [np.array_equal(o, i[::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_rotate90_permutes_pixels_by_quarter_turns():
    images = _batch()
    out = _run(AugmentConfig(rotate90=True), images)
    turns = []
    for o, i in zip(out, images):
        matches = [k for k in range(4) if np.array_equal(o, np.rot90(i, k, axes=(0, 1)))]
        assert matches, "each image is a quarter-turn rotation of its input"
        turns.append(matches[0])
    assert len(set(turns)) == 4


def test_rotate90_needs_square_images():
    with pytest.raises(ValueError, match="rotate90.*8x6"):
        make_augmenter(AugmentConfig(rotate90=True), (8, 6, 1), seed=0)


def test_crop_padding_keeps_shape_and_shifts_content():
    images = _batch(shape=(10, 10, 1)) + 1.0  # No zeros, so padding shows.
    out = _run(AugmentConfig(crop_padding=2), np.minimum(images, 255))
    assert out.shape == images.shape
    for o, i in zip(out, np.minimum(images, 255)):
        # Content is the input shifted by at most 2 pixels, zeros elsewhere.
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                padded = np.pad(i, ((2, 2), (2, 2), (0, 0)))
                crop = padded[2 + dy:12 + dy, 2 + dx:12 + dx]
                found = found or np.array_equal(o, crop)
        assert found
    assert (out == 0).any()


def test_geometric_transform_keeps_shape_and_stays_close_for_small_angles():
    images = np.zeros((4, 16, 16, 1), np.float32)
    images[:, 4:12, 4:12] = 200.0
    out = _run(AugmentConfig(rotation=5.0, zoom=0.05, translate=0.05), images)
    assert out.shape == images.shape
    assert not np.array_equal(out, images)
    # A square blob moved by a few degrees / pixels keeps most of its mass.
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), images.sum(axis=(1, 2, 3)), rtol=0.25)


def test_zero_transform_is_identity_within_interpolation():
    images = _batch(shape=(12, 12, 1))
    out = _run(AugmentConfig(rotation=1e-6), images)
    np.testing.assert_allclose(out, images, atol=0.1)


def test_brightness_shifts_each_image_mean():
    images = np.full((BATCH, 8, 8, 1), 128.0, np.float32)
    out = _run(AugmentConfig(brightness=30.0), images)
    shift = out.mean(axis=(1, 2, 3)) - 128.0
    assert np.all(np.abs(shift) <= 30.0 + 1e-3)
    assert np.std(shift) > 1.0
    # Uniform per image: every pixel of an image moves by the same amount.
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 0.0, atol=1e-3)


def test_contrast_scales_around_the_image_mean():
    images = _batch(shape=(8, 8, 1)) * 0.5 + 64  # Values in [64, 192).
    out = _run(AugmentConfig(contrast=0.5), images)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), rtol=1e-4)
    ratio = out.std(axis=(1, 2, 3)) / images.std(axis=(1, 2, 3))
    assert np.all((ratio >= 0.5 - 1e-3) & (ratio <= 1.5 + 1e-3))
    assert ratio.std() > 0.01


def test_saturation_and_hue_change_colour_but_not_grey():
    grey = np.repeat(_batch(shape=(8, 8, 1)), 3, axis=-1)
    out = _run(AugmentConfig(hue=0.2, saturation=0.5), grey)
    np.testing.assert_allclose(out, grey, atol=0.05)
    colour = _batch()
    out = _run(AugmentConfig(hue=0.2, saturation=0.5), colour)
    assert np.abs(out - colour).mean() > 1.0


def test_hue_needs_rgb():
    with pytest.raises(ValueError, match="augment.hue.*1 channel"):
        make_augmenter(AugmentConfig(hue=0.1), (8, 8, 1), seed=0)


def test_noise_changes_pixels_with_the_given_spread():
    images = np.full((BATCH, 16, 16, 1), 128.0, np.float32)
    out = _run(AugmentConfig(noise_std=10.0), images)
    assert 8.0 < (out - images).std() < 12.0


def test_values_are_clipped_to_0_255():
    images = _batch()
    out = _run(AugmentConfig(brightness=200.0, contrast=1.0, noise_std=50.0), images)
    assert out.min() == 0.0 and out.max() == 255.0


def test_reproducible_for_seed_and_key_and_different_otherwise():
    images = _batch()
    config = AugmentConfig(flip_horizontal=True, rotation=20, brightness=10, noise_std=3)
    a = _run(config, images, key=5, seed=1)
    np.testing.assert_array_equal(a, _run(config, images, key=5, seed=1))
    assert not np.array_equal(a, _run(config, images, key=6, seed=1))
    assert not np.array_equal(a, _run(config, images, key=5, seed=2))


def test_runs_inside_a_dataset_map_graph():
    augment = make_augmenter(AugmentConfig(rotate90=True, zoom=0.1, crop_padding=1), SHAPE, 3)
    ds = tf.data.Dataset.from_tensor_slices(_batch()).batch(8)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.range(100))).map(augment)
    shapes = [batch.shape for batch in ds]
    assert shapes == [(8, *SHAPE)] * 4


@pytest.mark.parametrize(
    "field, value",
    [
        ("rotation", 190.0),
        ("rotation", -1.0),
        ("zoom", 1.0),
        ("translate", 1.5),
        ("crop_padding", -2),
        ("crop_padding", 1.5),
        ("brightness", 300.0),
        ("contrast", 1.2),
        ("hue", 0.7),
        ("saturation", -0.1),
        ("noise_std", -1.0),
        ("flip_horizontal", "yes"),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"augment.{field}.*{value!r}"):
        make_augmenter(AugmentConfig(**{field: value}), SHAPE, seed=0)
