"""Classifying new images (file, folder, list file) and per-layer visualization."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import PIXEL_CLASSES as CLASSES, PIXEL_SIZE as SIZE


def _save_png(path, winner: int, strength: int = 150) -> str:
    """A 16x16 grayscale PNG that the pixel model classifies as `winner`."""
    image = np.full((SIZE, SIZE), 30, np.uint8)
    image[0, :3] = 20
    image[0, winner] = 20 + strength
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)
    return str(path)


def _probabilities(winner: int, strength: int = 150) -> np.ndarray:
    logits = np.full(3, 20.0)
    logits[winner] += strength
    e = np.exp(logits / 25)
    return e / e.sum()


@pytest.fixture()
def image_folder(tmp_path):
    root = tmp_path / "photos"
    _save_png(root / "b" / "2.png", winner=2)
    _save_png(root / "a" / "1.png", winner=1)
    _save_png(root / "0.png", winner=0)
    (root / "a" / "broken.png").write_bytes(b"this is not a png")
    (root / "notes.txt").write_text("not an image, not a list: skipped in a folder")
    return root


def test_classify_one_file_gives_sorted_top_k(pixel_model, tmp_path):
    from vispipe.evaluate import classify

    path = _save_png(tmp_path / "x.png", winner=1, strength=40)
    [pred] = classify(pixel_model, path, top_k=2, classes=CLASSES, progress=False)
    expected = _probabilities(1, 40)
    assert pred.path == path and pred.error is None
    assert [c for c, _ in pred.top] == ["dog", "cat"]
    assert pred.predicted == "dog"
    np.testing.assert_allclose([p for _, p in pred.top], [expected[1], expected[0]], rtol=1e-4)
    assert pred.correct is None


def test_classify_folder_reports_bad_files_and_classifies_the_rest(pixel_model, image_folder):
    from vispipe.evaluate import accuracy, classify, predictions_table

    preds = classify(pixel_model, str(image_folder), classes=CLASSES, batch_size=2,
                     progress=False)
    names = [os.path.relpath(p.path, image_folder) for p in preds]
    assert names == ["0.png", os.path.join("a", "1.png"), os.path.join("a", "broken.png"),
                     os.path.join("b", "2.png")]
    assert [p.predicted for p in preds] == ["cat", "dog", None, "bird"]
    broken = preds[2]
    assert broken.error and broken.top == []
    assert all(p.error is None and len(p.top) == 3 for p in preds if p is not broken)
    assert accuracy(preds) is None
    table = predictions_table(preds)
    assert "ERROR" in table and "1 of 4 files could not be classified" in table


def test_classify_list_file_with_labels_computes_accuracy(pixel_model, tmp_path):
    from vispipe.evaluate import accuracy, classify, predictions_table, write_predictions_csv

    _save_png(tmp_path / "imgs" / "one.png", winner=0)
    _save_png(tmp_path / "imgs" / "two words.png", winner=1)
    _save_png(tmp_path / "imgs" / "three.png", winner=2)
    unlabelled = _save_png(tmp_path / "elsewhere" / "four.png", winner=2)
    listing = tmp_path / "list.txt"
    listing.write_text(
        "imgs/one.png cat\n"
        "\n"
        "imgs/two words.png 2\n"  # Label by id: bird, but predicted dog.
        "imgs/three.png 2\n"
        f"{unlabelled}\n"
    )
    preds = classify(pixel_model, str(listing), top_k=1, classes=CLASSES, progress=False)
    assert [p.label for p in preds] == ["cat", "bird", "bird", None]
    assert [p.predicted for p in preds] == ["cat", "dog", "bird", "bird"]
    assert [p.correct for p in preds] == [True, False, True, None]
    assert accuracy(preds) == pytest.approx(2 / 3)
    assert "Accuracy: 66.67% of 3 labelled images" in predictions_table(preds)

    out = write_predictions_csv(preds, str(tmp_path / "out" / "preds.csv"))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["predicted"] for r in rows] == ["cat", "dog", "bird", "bird"]
    assert rows[1]["label"] == "bird" and rows[1]["class_1"] == "dog"
    assert rows[3]["path"] == unlabelled


def test_classify_list_file_rejects_a_label_out_of_range(pixel_model, tmp_path):
    from vispipe.evaluate import classify

    _save_png(tmp_path / "one.png", winner=0)
    listing = tmp_path / "list.txt"
    listing.write_text("one.png 7\n")
    with pytest.raises(ValueError, match=r"list.txt, line 1: label 7 is out of range"):
        classify(pixel_model, str(listing), classes=CLASSES, progress=False)


def test_classify_list_of_paths_reports_a_missing_file(pixel_model, tmp_path):
    from vispipe.evaluate import classify

    good = _save_png(tmp_path / "good.png", winner=2)
    missing = str(tmp_path / "missing.png")
    preds = classify(pixel_model, [missing, good], classes=CLASSES, progress=False)
    assert preds[0].error and preds[0].predicted is None
    assert preds[1].predicted == "bird"


# --- visualize -----------------------------------------------------------------

@pytest.fixture(scope="module")
def nested_model():
    """conv -> pool -> [nested Sequential: conv -> relu] -> flatten -> dense."""
    import keras

    inner = keras.Sequential(
        [keras.Input((7, 7, 4)), keras.layers.Conv2D(6, 3, name="inner_conv"),
         keras.layers.ReLU(name="inner_relu")],
        name="block",
    )
    inputs = keras.Input((SIZE, SIZE, 1), name="data")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = inner(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name="nested")


def test_visualize_flattens_nested_models_with_shapes_and_params(nested_model, tmp_path):
    from vispipe.evaluate import visualize

    image = _save_png(tmp_path / "x.png", winner=0)
    out = str(tmp_path / "viz")
    stats = visualize(nested_model, image, out, max_filters=3)
    by_name = {s.name: s for s in stats}
    assert [s.name for s in stats] == [
        "data", "conv1", "pool1", "block/inner_conv", "block/inner_relu", "flatten", "fc",
    ]
    assert [s.shape for s in stats] == [
        (16, 16, 1), (14, 14, 4), (7, 7, 4), (5, 5, 6), (5, 5, 6), (150,), (3,),
    ]
    assert by_name["conv1"].params == 3 * 3 * 1 * 4 + 4
    assert by_name["block/inner_conv"].params == 3 * 3 * 4 * 6 + 6
    assert by_name["fc"].params == 150 * 3 + 3
    assert by_name["pool1"].params == 0 and by_name["pool1"].weights == []
    assert [w.shape for w in by_name["conv1"].weights] == [(3, 3, 1, 4), (4,)]
    kernel = nested_model.get_layer("conv1").kernel.numpy()
    assert by_name["conv1"].weights[0].mean == pytest.approx(float(kernel.mean()), rel=1e-5)
    assert by_name["fc"].min >= 0 and sum(by_name["fc"].histogram["counts"]) == 3
    # The input's statistics are the image's pixels.
    pixels = np.asarray(Image.open(image), np.float64)
    assert by_name["data"].mean == pytest.approx(pixels.mean())
    assert by_name["data"].max == 170
    for s in stats:
        assert len(s.histogram["counts"]) == 20 and len(s.histogram["edges"]) == 21
        assert os.path.isfile(s.files["histogram"])

    # Activation grids for spatial outputs; kernels for the first two convolutions.
    assert {s.name for s in stats if "activations" in s.files} == {
        "data", "conv1", "pool1", "block/inner_conv", "block/inner_relu"}
    assert {s.name for s in stats if "weights" in s.files} == {"conv1", "block/inner_conv"}
    for s in stats:
        for path in s.files.values():
            with Image.open(path) as png:
                assert png.format == "PNG"

    with open(os.path.join(out, "layers.json")) as f:
        saved = json.load(f)
    assert [layer["name"] for layer in saved["layers"]] == [s.name for s in stats]
    assert saved["layers"][1]["shape"] == [14, 14, 4]
    assert saved["image_options"]["height"] == SIZE


def test_visualize_sequential_model(tmp_path):
    import keras

    from vispipe.evaluate import visualize

    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(5, 3, name="c1"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(2, activation="softmax", name="out"),
    ])
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = str(tmp_path / "rgb.png")
    Image.fromarray(rgb).save(path)
    stats = visualize(model, path, str(tmp_path / "viz"))
    assert [s.name for s in stats[1:]] == ["c1", "gap", "out"]
    assert stats[0].shape == (SIZE, SIZE, 3) and stats[1].shape == (14, 14, 5)
    # An RGB first layer draws one color tile per filter.
    with Image.open(stats[1].files["weights"]) as png:
        assert png.mode == "RGB"


def test_tensor_stats_on_known_values():
    from vispipe.evaluate.visualize import tensor_stats

    s = tensor_stats("w", np.array([[0.0, 1.0], [2.0, np.nan]]))
    assert (s.mean, s.min, s.max, s.size, s.shape) == (1.0, 0.0, 2.0, 4, (2, 2))
    assert s.std == pytest.approx(np.std([0.0, 1.0, 2.0]))
    assert sum(s.histogram["counts"]) == 3
