"""Grad-CAM: layer choice on any network, and the paper's localisation check on
a model trained here on real MNIST digits pasted into larger canvases.

Cost: the localisation test trains LeNet on 1,000 56x56 canvases for 3 epochs
(about 10 s on 2 idle cores); the others build small models (< 2 s each).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from insight_data import extracted, load_split
from vispipe.evaluate.gradcam import (
    GradCam,
    find_target_layer,
    heatmap_peak,
    overlay_heatmap,
    paste_into_canvas,
    pasted_localisation,
    save_overlay,
    spatial_layers,
)
from vispipe.models import build_model

CANVAS = 56


def _wrapped(network: keras.Model, shape) -> keras.Model:
    """A network nested inside a model that scales its input (as a custom network is)."""
    inputs = keras.Input(shape)
    return keras.Model(inputs, network(keras.layers.Rescaling(1 / 255.0)(inputs)))


def test_the_last_spatial_layer_is_picked_through_nested_models():
    model = _wrapped(build_model("lenet", (28, 28, 1), 10), (28, 28, 1))
    assert spatial_layers(model) == ["lenet/conv1", "lenet/pool1", "lenet/conv2", "lenet/pool2"]
    assert find_target_layer(model) == "lenet/pool2"
    assert find_target_layer(model, "conv1") == "lenet/conv1"
    assert find_target_layer(model, "lenet/conv2") == "lenet/conv2"
    with pytest.raises(ValueError, match="no spatial output.*lenet/pool2"):
        find_target_layer(model, "fc1")
    with pytest.raises(ValueError, match="has no layer 'conv9'"):
        find_target_layer(model, "conv9")
    dense_only = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="no layer with a spatial output"):
        find_target_layer(dense_only)


def test_the_heat_map_shows_where_each_class_found_its_evidence():
    # Feature map 0 marks "stripes", map 1 "dots" (an identity 1x1 conv of a
    # 2-channel image); class "stripes" sums map 0, class "dots" map 1. The
    # image has stripes top-left and dots bottom-right.
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")
    head = keras.layers.Dense(2, activation="softmax", name="head")
    model = keras.Sequential([keras.Input((8, 8, 2)), conv, keras.layers.Flatten(), head])
    conv.set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    kernel = np.zeros((8 * 8 * 2, 2), np.float32)
    kernel[0::2, 0] = 1.0
    kernel[1::2, 1] = 1.0
    head.set_weights([kernel, np.zeros(2, np.float32)])
    image = np.zeros((1, 8, 8, 2), np.float32)
    image[0, :4, :4, 0] = 1.0
    image[0, 4:, 4:, 1] = 1.0

    for method in ("gradcam", "gradcam++"):
        explain = GradCam(model, method=method)
        stripes, dots = (explain(image, class_ids=[c]).heatmaps[0] for c in (0, 1))
        assert explain.layer == "conv" and stripes.shape == (8, 8)
        assert stripes.max() == pytest.approx(1.0)
        assert stripes[:4, :4].mean() > 0.8 and stripes[4:, 4:].mean() < 0.2
        assert dots[4:, 4:].mean() > 0.8 and dots[:4, :4].mean() < 0.2
        assert max(heatmap_peak(stripes)) < 4 and min(heatmap_peak(dots)) >= 3


def test_overlays_are_rgb_images_of_the_input_size(tmp_path):
    image = np.zeros((28, 28, 1), np.uint8)
    heat = np.zeros((28, 28), np.float32)
    heat[3, 5] = 1.0
    rgb = overlay_heatmap(image, heat)
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    assert rgb[3, 5].tolist() != rgb[20, 20].tolist()
    path = save_overlay(image, heat, str(tmp_path / "cam" / "x.png"))
    from PIL import Image

    assert Image.open(path).size == (140, 140)  # Upscaled to at least 128 px.


def test_pasting_places_each_image_inside_the_canvas():
    images = np.full((5, 28, 28, 1), 200, np.uint8)
    canvases, boxes = paste_into_canvas(images, (56, 56), background="noise", seed=3)
    for canvas, (top, left, h, w) in zip(canvases, boxes):
        assert (canvas[top:top + h, left:left + w] == 200).all()
        assert canvas.sum() > 200 * 28 * 28  # Noise around it.
    with pytest.raises(ValueError, match="at least the image size"):
        paste_into_canvas(images, (20, 20))


@pytest.fixture(scope="module")
def canvas_model():
    """LeNet trained on real MNIST digits pasted at random places of 56x56 canvases."""
    root = extracted("mnist-png.tar.gz", 100)
    images, labels, _ = load_split(root, "train")
    keras.utils.set_random_seed(0)
    canvases, _ = paste_into_canvas(images, (CANVAS, CANVAS), seed=1)
    model = _wrapped(build_model("lenet", (CANVAS, CANVAS, 1), 10), (CANVAS, CANVAS, 1))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(canvases, labels, batch_size=32, epochs=3, verbose=0)
    test_images, test_labels, _ = load_split(root, "test", per_class=20)
    return model, test_images, test_labels


def test_heat_map_peaks_inside_the_pasted_digit(canvas_model):
    model, images, labels = canvas_model
    result = pasted_localisation(model, images, labels, seed=7)
    assert result.layer == "lenet/pool2"
    assert result.chance == pytest.approx(0.25)
    # A map that ignored the image would peak inside it a quarter of the time.
    assert result.rate >= 0.8, result.to_json()
    plus = pasted_localisation(model, images, labels, seed=7, method="gradcam++")
    assert plus.rate >= 0.5, plus.to_json()
