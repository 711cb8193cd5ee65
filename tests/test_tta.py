"""Test-time augmentation: views follow the run's augmentation, and the
prediction is the mean over them.

Cost: under a second each (a 2-layer model on a handful of images).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vispipe.configs import AugmentConfig
from vispipe.evaluate.tta import View, apply_view, predict_tta, tta_views


def test_views_follow_the_training_augmentation():
    assert [v.name for v in tta_views(AugmentConfig(), (28, 28, 1))] == ["identity"]
    names = [v.name for v in tta_views(AugmentConfig(flip_horizontal=True, crop_padding=4),
                                       (32, 32, 3))]
    assert names == ["identity", "flip_h", "shift(+0,-4)", "shift(+0,+4)", "shift(-4,+0)",
                     "shift(+4,+0)"]
    translated = tta_views(AugmentConfig(translate=0.1, zoom=0.2, rotate90=True), (20, 40, 1))
    assert [v.name for v in translated] == ["identity", "shift(+0,-2)", "shift(+0,+2)",
                                            "shift(-1,+0)", "shift(+1,+0)", "zoom(1.10)"]
    assert all(v.fill == "reflect" for v in translated[1:5])  # No rot90 on 20x40.


def test_views_move_the_pixels_as_named():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    assert apply_view(image, View("f", flip_h=True))[0, 0, :, 0].tolist() == [3, 2, 1, 0]
    shifted = apply_view(image, View("s", dx=1))[0, :, :, 0]
    assert shifted[:, 0].tolist() == [0, 0, 0, 0] and shifted[0, 1:].tolist() == [0, 1, 2]
    down = apply_view(image, View("s", dy=-1, fill="reflect"))[0, :, :, 0]
    assert down[0].tolist() == [4, 5, 6, 7] and down[3].tolist() == [8, 9, 10, 11]
    assert apply_view(image, View("z", zoom=2.0)).shape == image.shape


def test_prediction_is_the_mean_over_the_views():
    # Probability of class 1 grows with the brightness of the left half, so
    # the mirror view disagrees with the identity.
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    kernel = np.zeros((16, 2), np.float32)
    kernel[[0, 1, 4, 5, 8, 9, 12, 13], 1] = 1.0
    dense.set_weights([kernel, np.zeros(2, np.float32)])
    images = np.zeros((1, 4, 4, 1), np.float32)
    images[0, :, :2] = 1.0
    views = tta_views(AugmentConfig(flip_horizontal=True), (4, 4, 1))
    plain = model.predict_on_batch(images)
    mirrored = model.predict_on_batch(images[:, :, ::-1])
    assert predict_tta(model.predict_on_batch, images, views) == pytest.approx((plain + mirrored) / 2, abs=1e-6)
    assert predict_tta(model.predict_on_batch, images, views[:1]) == pytest.approx(plain, abs=1e-6)
    with pytest.raises(ValueError, match="at least one view"):
        predict_tta(model.predict_on_batch, images, [])
