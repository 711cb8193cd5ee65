"""A `weights: imagenet` model trained from the CLI and exported: the preprocessing travels.

The weights file is keras.applications' VGG-16 in its published name and
layout, with random values (no network here, so accuracy is not the point);
the data is real MNIST,
grayscale, so the model repeats the channel, flips it to BGR and subtracts the
ImageNet means inside its `Preprocess` layer. `vispipe export` then verifies
every artifact in its own runtime against the Keras model on raw uint8
images. Costs about 2 minutes on 2 cores (the export most of it).
"""

from __future__ import annotations

import json
import os

import pytest

from test_imagenet_weights import write_keras_weights_file
from vispipe.cli import main
from vispipe.train.run_info import Normalization
from vispipe.train.run_folder import read_run_info

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).


@pytest.fixture(scope="module")
def imagenet_run(mnist_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet-run")
    weights_dir = root / "weights"
    weights_dir.mkdir()
    write_keras_weights_file("vgg16", str(weights_dir), size=32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", str(root / "home"))
        patch.setenv("VISPIPE_WEIGHTS_DIR", str(weights_dir))
        assert main(["dataset", "create", "--train-dir", os.path.join(mnist_small, "train"),
                     "--val-dir", os.path.join(mnist_small, "test"), "--out",
                     str(root / "ds"), "--size", "32x32", "--channels", "1", "--quiet"]) == 0
        assert main(["train", "--dataset", str(root / "ds"), "--run", str(root / "run"),
                     "--model", "vgg16", "--weights", "imagenet", "--freeze-epochs", "1",
                     "--epochs", "2", "--batch-size", "32", "--optimizer", "adam", "--lr", "0.001",
                     "--quiet"]) == 0
    return root


def test_run_records_the_weights_preprocessing_and_phases(imagenet_run):
    info = read_run_info(str(imagenet_run / "run"))
    assert info.status == "completed"
    assert info.model.weights == "imagenet"
    assert info.normalization == Normalization("caffe", to_rgb=True)
    assert info.pretrained.source == "imagenet" and info.pretrained.file.endswith(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert info.warnings == [] and info.epochs_completed == 2
    with open(imagenet_run / "run" / "metrics.jsonl") as f:
        epochs = [json.loads(line) for line in f if '"epoch"' in line and '"kind": "epoch"' in line]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[1]["lr"] == pytest.approx(epochs[0]["lr"] * 0.1)  # Unfrozen: lower.


def test_exported_artifacts_pass_verification(imagenet_run):
    out = imagenet_run / "export"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", str(imagenet_run / "home"))
        code = main(["export", "--run", str(imagenet_run / "run"), "--out", str(out),
                     # Float formats only: two epochs from random weights in the published
                     # layout leave probabilities near uniform, where int8's top-1 flips by
                     # rounding alone (test_export_formats checks the int8 variants).
                     "--formats", "savedmodel,tfjs,onnx_float32",
                     "--calibration-size", "32",
                     "--verify-split", "val", "--verify-limit", "64", "--tfjs-weights", "float32"])
    with open(out / "export_report.json") as f:
        report = json.load(f)
    rows = {r["format"]: r for r in report["formats"]}
    assert code == 0, {k: r.get("reason") for k, r in rows.items()}
    assert {"savedmodel", "onnx_float32", "tfjs_float32"} <= set(rows)
    assert all(r["status"] == "passed" for r in rows.values())
