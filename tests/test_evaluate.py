"""Metrics on hand-computed examples, and the files an evaluation writes."""

from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from vispipe.evaluate import metrics

# 7 images, 3 classes; class 2 is never predicted.
LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 1, 1, 1, 1, 0, 1])


def test_confusion_matrix_rows_are_true_columns_predicted():
    cm = metrics.confusion_matrix(LABELS, PREDICTED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 2, 0]])


def test_confusion_matrix_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match=r"predicted: expected class ids in \[0, 3\)"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)


def test_per_class_scores_with_a_class_never_predicted_warns_nothing():
    cm = metrics.confusion_matrix(LABELS, PREDICTED, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = metrics.per_class_scores(cm)
        avg = metrics.averages(scores)
    np.testing.assert_allclose(scores.precision, [1 / 2, 2 / 5, 0.0])
    np.testing.assert_allclose(scores.recall, [1 / 2, 1.0, 0.0])
    np.testing.assert_allclose(scores.f1, [0.5, 2 * 0.4 / 1.4, 0.0])
    np.testing.assert_array_equal(scores.support, [2, 2, 3])
    np.testing.assert_array_equal(scores.predicted, [2, 5, 0])
    assert avg["macro"]["f1"] == pytest.approx((0.5 + 0.8 / 1.4) / 3)
    assert avg["weighted"]["f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 / 1.4) / 7)
    assert avg["macro"]["precision"] == pytest.approx((0.5 + 0.4) / 3)


def test_scores_agree_with_scikit_learn_on_random_data():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 200)
    predicted = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))
    scores = metrics.per_class_scores(metrics.confusion_matrix(labels, predicted, 6))
    avg = metrics.averages(scores)
    for average in ("macro", "weighted"):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            labels, predicted, average=average, zero_division=0
        )
        assert avg[average] == pytest.approx({"precision": p, "recall": r, "f1": f})


def test_averages_skip_classes_absent_from_labels_and_predictions():
    cm = metrics.confusion_matrix(np.array([0, 1]), np.array([0, 1]), 4)
    assert metrics.averages(metrics.per_class_scores(cm))["macro"]["f1"] == 1.0


def test_top_k_accuracy_counts_ties_at_the_boundary_as_hits():
    probs = np.array([
        [0.5, 0.3, 0.2],  # true 0: top-1 hit
        [0.5, 0.3, 0.2],  # true 2: third
        [0.4, 0.3, 0.3],  # true 2: tied second
        [0.1, 0.2, 0.7],  # true 1: second
    ])
    labels = np.array([0, 2, 2, 1])
    assert metrics.top_k_accuracy(probs, labels, 1) == 0.25
    assert metrics.top_k_accuracy(probs, labels, 2) == 0.75
    assert metrics.top_k_accuracy(probs, labels, 3) == 1.0
    assert metrics.top_k_accuracy(probs, labels, 5) == 1.0


def test_top_k_accuracy_rejects_mismatched_labels():
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        metrics.top_k_accuracy(np.full((2, 3), 1 / 3), np.array([0, 1, 2]))


def test_most_confused_orders_by_count_then_class():
    cm = metrics.confusion_matrix(LABELS, PREDICTED, 3)
    pairs = metrics.most_confused(cm, ["a", "b", "c"], n=10)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "b", 2), ("a", "b", 1), ("c", "a", 1),
    ]
    assert pairs[0]["share"] == pytest.approx(2 / 3)
    assert len(metrics.most_confused(cm, ["a", "b", "c"], n=1)) == 1


def test_per_image_loss_and_top_losses_ordering():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    labels = np.array([0, 0, 1, 1, 0])
    losses = metrics.per_image_loss(probs, labels)
    np.testing.assert_allclose(
        losses, [-np.log(0.9), -np.log(0.2), -np.log(0.5), -np.log(metrics.LOSS_EPSILON),
                 -np.log(0.2)]
    )
    # Largest first; the equal losses of images 1 and 4 keep index order.
    np.testing.assert_array_equal(metrics.top_losses(losses, 4), [3, 1, 4, 2])


def test_most_uncertain_by_margin_and_by_max_prob():
    probs = np.array([[0.5, 0.45, 0.05], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33]])
    np.testing.assert_array_equal(metrics.most_uncertain(probs, 2, by="margin"), [3, 0])
    np.testing.assert_array_equal(metrics.most_uncertain(probs, 2, by="max_prob"), [3, 1])


# --- evaluate_model ------------------------------------------------------------

from conftest import PIXEL_CLASSES as CLASSES, PIXEL_SIZE as SIZE


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _images_with_logits(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(pixels), SIZE, SIZE, 1), dtype=np.uint8)
    images[:, 0, :3, 0] = pixels
    return images


@pytest.fixture(scope="module")
def eval_data():
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 2] * 5)
    pixels = rng.integers(0, 120, (15, 3))
    pixels[np.arange(15), labels] += 100  # Mostly right...
    pixels[4] = [10, 10, 200]  # ...image 4 (a dog) is confidently a bird,
    pixels[7] = [60, 70, 50]   # image 7 (a dog) is uncertain.
    images = _images_with_logits(pixels.astype(np.uint8))
    probs = _softmax(pixels.astype(np.float64) / 25)
    return images, labels, probs


def test_evaluate_model_metrics_match_the_probabilities(pixel_model, eval_data):
    from vispipe.evaluate import evaluate_model

    images, labels, probs = eval_data
    result = evaluate_model(pixel_model, images, labels, CLASSES, batch_size=4,
                            split="val", progress=False)
    predicted = probs.argmax(1)
    assert result.num_images == 15
    assert result.top1_accuracy == pytest.approx(np.mean(predicted == labels))
    assert result.top5_accuracy == 1.0 and result.top_k == 3
    assert result.mean_loss == pytest.approx(metrics.per_image_loss(probs, labels).mean(), rel=1e-4)
    np.testing.assert_array_equal(
        result.confusion_matrix, metrics.confusion_matrix(labels, predicted, 3)
    )
    assert result.top_losses[0]["index"] == 4
    assert result.top_losses[0]["true"] == "dog" and result.top_losses[0]["predicted"] == "bird"
    assert result.files == {}  # No out_dir: nothing written.


def test_evaluate_model_writes_every_file(pixel_model, eval_data, tmp_path):
    from vispipe.evaluate import evaluate_model

    images, labels, probs = eval_data
    names = [f"img{i:02d}.png" for i in range(len(labels))]
    out = str(tmp_path / "eval")
    result = evaluate_model(pixel_model, images, labels, CLASSES, filenames=names,
                            out_dir=out, split="test", top_losses=4, batch_size=6,
                            progress=False)
    expected = {"metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "per_class.csv",
                "predictions.csv", "top_losses.png", "uncertain.png"}
    assert set(os.listdir(out)) == expected
    assert {os.path.basename(p) for p in result.files.values()} == expected
    for name in ("confusion_matrix.png", "top_losses.png", "uncertain.png"):
        with Image.open(os.path.join(out, name)) as png:
            assert png.format == "PNG" and min(png.size) > 100

    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result.to_json()))
    for key in ("top1_accuracy", "top5_accuracy", "num_images", "split", "per_class",
                "macro_f1", "most_confused", "files"):
        assert key in saved
    assert saved["split"] == "test" and saved["num_images"] == 15
    assert [row["class"] for row in saved["per_class"]] == CLASSES
    assert saved["top_losses"][0]["filename"] == "img04.png"
    assert len(saved["top_losses"]) == 4

    with open(os.path.join(out, "confusion_matrix.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true\\predicted", *CLASSES]
    assert [r[0] for r in rows[1:]] == CLASSES
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], int),
                                  result.confusion_matrix)

    with open(os.path.join(out, "predictions.csv"), newline="") as f:
        preds = list(csv.DictReader(f))
    assert [p["filename"] for p in preds] == names
    assert preds[4]["true"] == "dog" and preds[4]["predicted"] == "bird"
    assert float(preds[4]["probability"]) == pytest.approx(probs[4].max(), abs=1e-4)

    with open(os.path.join(out, "per_class.csv"), newline="") as f:
        per_class = list(csv.DictReader(f))
    assert [int(r["support"]) for r in per_class] == [5, 5, 5]

    table = result.summary_table()
    assert "top-1 accuracy" in table and "bird" in table and "predicted as" in table


def test_evaluate_model_applies_softmax_to_logits_with_a_warning(eval_data):
    import keras

    from vispipe.evaluate import evaluate_model

    images, labels, probs = eval_data
    inputs = keras.Input((SIZE, SIZE, 1))
    logits = keras.layers.Dense(3, use_bias=False, name="pick")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, logits)
    kernel = np.zeros((SIZE * SIZE, 3), np.float32)
    kernel[[0, 1, 2], [0, 1, 2]] = 1 / 25
    model.get_layer("pick").set_weights([kernel])
    with pytest.warns(UserWarning, match="applying a softmax"):
        result = evaluate_model(model, images, labels, CLASSES, progress=False)
    assert result.top_losses[0]["true_probability"] == pytest.approx(probs[4, 1], rel=1e-4)


def test_evaluate_model_rejects_a_model_with_another_class_count(pixel_model, eval_data):
    from vispipe.evaluate import evaluate_model

    images, labels, _ = eval_data
    with pytest.raises(ValueError, match="outputs 3 classes, expected 4"):
        evaluate_model(pixel_model, images, labels, CLASSES + ["fish"], progress=False)


# --- evaluate_run: errors found before the model is loaded ---------------------

def _write_dataset_info(path, classes, split_counts):
    from vispipe.data.format import INFO_FILE, DatasetInfo

    os.makedirs(path, exist_ok=True)
    info = DatasetInfo(
        path=str(path), classes=classes, height=SIZE, width=SIZE, channels=1, encoding="png",
        split_counts=split_counts, class_counts={}, shards={}, mean_pixel=[0.0],
        std_pixel=[1.0],
    )
    with open(os.path.join(path, INFO_FILE), "w") as f:
        json.dump(info.to_json(), f)


def _write_run(path, classes, dataset_dir):
    from vispipe.configs import ModelConfig, TrainConfig
    from vispipe.data.format import ImageInput
    from vispipe.train.run_folder import RunFolder
    from vispipe.train.run_info import Normalization, RunInfo

    RunFolder(path).write_info(RunInfo(
        name="r", status="completed", dataset_dir=dataset_dir, classes=classes,
        image=ImageInput(SIZE, SIZE, 1, "squash"), normalization=Normalization("none"),
        model=ModelConfig(), train=TrainConfig()))


def test_evaluate_run_names_the_missing_split(tmp_path):
    from vispipe.evaluate import evaluate_run

    dataset = str(tmp_path / "ds")
    _write_dataset_info(dataset, CLASSES, {"train": 6, "val": 3})
    _write_run(str(tmp_path / "run"), CLASSES, dataset)
    with pytest.raises(ValueError, match=r"no 'test' split.*\['train', 'val'\]"):
        evaluate_run(str(tmp_path / "run"), split="test")


def test_evaluate_run_rejects_a_dataset_with_other_classes(tmp_path):
    from vispipe.evaluate import evaluate_run

    dataset = str(tmp_path / "ds")
    _write_dataset_info(dataset, ["cat", "dog", "fish"], {"train": 6, "test": 3})
    _write_run(str(tmp_path / "run"), CLASSES, str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="first differ at label 2: run 'bird', dataset 'fish'"):
        evaluate_run(str(tmp_path / "run"), dataset_dir=dataset)


def test_evaluate_run_without_run_json(tmp_path):
    from vispipe.evaluate import evaluate_run

    with pytest.raises(FileNotFoundError, match="run.json is missing"):
        evaluate_run(str(tmp_path))


# --- end to end: dataset -> 1-epoch run -> evaluate, classify, visualize ---------

def _write_class_folders(root, per_class: int = 8) -> None:
    """Three 28x28 grayscale classes: bright top, bright bottom, bright left."""
    rng = np.random.default_rng(7)
    regions = {"top": np.s_[:14, :], "bottom": np.s_[14:, :], "left": np.s_[:, :14]}
    for name, region in regions.items():
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            image[region] += 180
            Image.fromarray(image).save(os.path.join(root, name, f"{i}.png"))


def test_run_folder_end_to_end(tmp_path):
    from vispipe.configs import DatasetConfig, ImageOptions, ModelConfig, TrainConfig
    from vispipe.data.create import create_dataset
    from vispipe.data.inputs import make_dataset
    from vispipe.evaluate import classify, evaluate_run, visualize
    from vispipe.models import build_classifier
    from vispipe.train.run_folder import RunFolder
    from vispipe.train.run_info import Normalization, RunInfo

    source = str(tmp_path / "photos")
    _write_class_folders(source)
    info = create_dataset(DatasetConfig(
        source=source, output=str(tmp_path / "ds"), val_percent=25.0, test_percent=25.0,
        image=ImageOptions(height=28, width=28, channels=1), workers=1,
    ), progress=False)
    model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(make_dataset(info, "train", 4, training=True), epochs=1, verbose=0, shuffle=False)
    run = RunFolder(tmp_path / "run")
    run.write_info(RunInfo(name="e2e", dataset_dir=info.path, classes=info.classes,
                           image=info.image, normalization=Normalization("standardize"),
                           model=ModelConfig(name="lenet"), train=TrainConfig(),
                           status="completed"))
    model.save(run.model_path)

    result = evaluate_run(run.path, split="test", top_losses=4, progress=False)
    assert result.num_images == info.split_counts["test"]
    assert result.classes == info.classes and result.dataset_dir == info.path
    assert os.path.isfile(os.path.join(run.path, "eval-test", "metrics.json"))
    with open(os.path.join(run.path, "eval-test", "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.num_images and all(r["filename"] for r in rows)
    with pytest.raises(FileNotFoundError, match="no 'best' model"):
        evaluate_run(run.path, split="test", which="best", progress=False)

    preds = classify(run.path, source, top_k=2, progress=False)
    assert len(preds) == 24 and all(p.error is None and len(p.top) == 2 for p in preds)
    assert {p.predicted for p in preds} <= set(info.classes)

    stats = visualize(run.path, os.path.join(source, "top", "0.png"), str(tmp_path / "viz"))
    assert stats[0].shape == (28, 28, 1) and stats[-1].shape == (3,)
