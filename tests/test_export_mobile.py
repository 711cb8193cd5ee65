"""The mobile networks export like the others: pruning covers depthwise kernels,
and TF.js outputs keep their names when probabilities and scores share a shape.

MobileNetV2 and EfficientNet-B0 at 32x32 (the smallest size they take), on
real CIFAR-10 images (8 training and 2 test images per class), with 2, 5 and
10 classes: with the default top-5, 2 and 5 classes give `probabilities` and
`scores` the same shape, which is where the TF.js converter drops the names.
The networks are untrained (what is tested is pruning and conversion; the
trained runs are measured in the README's export table).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import extract_subset, shared_datasets_dir  # noqa: E402

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).

NETWORKS = ("mobilenet_v2", "efficientnet_b0")
CLASS_COUNTS = (2, 5, 10)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory) -> str:
    archive = os.path.join(shared_datasets_dir(), "cifar10-jpg.tar.gz")
    if not os.path.isfile(archive):
        pytest.skip(f"CIFAR-10 archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    dest = str(tmp_path_factory.mktemp("cifar-small"))
    extract_subset(archive, dest, per_class=8)
    return os.path.join(dest, "cifar10-jpg")


def _dataset(source: str, classes: int, out: str):
    """A 32x32 dataset of the first `classes` CIFAR-10 classes (test: 2 per class)."""
    import shutil

    from vispipe.configs import DatasetConfig, ImageOptions
    from vispipe.data.create import create_dataset

    folders = os.path.join(out, "images")
    for split in ("train", "test"):
        for name in CIFAR_CLASSES[:classes]:
            files = sorted(os.listdir(os.path.join(source, split, name)))
            os.makedirs(os.path.join(folders, split, name))
            for file in files[:8 if split == "train" else 2]:
                shutil.copy(os.path.join(source, split, name, file),
                            os.path.join(folders, split, name, file))
    return create_dataset(DatasetConfig(
        train_dir=os.path.join(folders, "train"), test_dir=os.path.join(folders, "test"),
        output=os.path.join(out, "dataset"), val_percent=0, workers=1,
        image=ImageOptions(height=32, width=32, channels=3)), progress=False)


@pytest.fixture(scope="module", params=[(n, c) for n in NETWORKS for c in CLASS_COUNTS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def mobile(request, cifar_small, tmp_path_factory):
    """A mobile network (untrained: conversion is what is tested) and its dataset."""
    import keras

    from vispipe.configs import ModelConfig
    from vispipe.data.inputs import load_arrays
    from vispipe.export.contract import RunSpec
    from vispipe.models import build_classifier

    network, classes = request.param
    root = str(tmp_path_factory.mktemp(f"{network}-{classes}"))
    info = _dataset(cifar_small, classes, root)
    keras.utils.set_random_seed(1)
    model = build_classifier(ModelConfig(name=network), info, "standardize")
    spec = RunSpec(name=network, run_dir=root, run_name=network, classes=tuple(info.classes),
                   image_shape=tuple(info.image_shape), preprocess={"mode": "standardize"},
                   resize_mode="squash", dataset_dir=info.path, top_k=min(5, classes))
    return {"root": root, "model": model, "spec": spec, "train": load_arrays(info, "train"),
            "test": load_arrays(info, "test")}


def test_depthwise_kernels_are_pruned(mobile):
    from vispipe.export.pruning import prune_model
    from vispipe.export.tflite import convert_tflite, tflite_runner

    images, labels = mobile["train"]
    pruned, report = prune_model(mobile["model"], images, labels, 0.5, epochs=1,
                                 progress=False)
    depthwise = [layer for layer in report.layers if "depthwise" in layer["name"]
                 or layer["name"].endswith("dwconv")]
    assert len(depthwise) >= 16, [layer["name"] for layer in report.layers]
    for layer in report.layers:
        assert layer["sparsity"] == pytest.approx(0.5, abs=0.05), layer
    if mobile["spec"].num_classes == 5:  # and the pruned network converts and runs
        path = os.path.join(mobile["root"], "pruned.tflite")
        convert_tflite(pruned, mobile["spec"], path, "float32")
        test_images = mobile["test"][0]
        expected = pruned(test_images.astype("float32"), training=False).numpy()
        np.testing.assert_allclose(tflite_runner(path)(test_images), expected, atol=1e-4)


def test_tfjs_outputs_are_found_by_recorded_names(mobile):
    from vispipe.export.contract import serving_archive
    from vispipe.export.tfjs import convert_tfjs, tfjs_runner

    spec, root = mobile["spec"], mobile["root"]
    savedmodel = os.path.join(root, "savedmodel")
    serving_archive(mobile["model"], spec, full=False).write_out(savedmodel, verbose=False)
    out = convert_tfjs(savedmodel, os.path.join(root, "tfjs"), "float32", spec.to_json())
    images = mobile["test"][0]
    probabilities = tfjs_runner(out)(images)  # also checks label ids and scores
    expected = mobile["model"](images.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)

    with open(os.path.join(out, "model.json")) as f:
        model_json = json.load(f)
    names = model_json["userDefinedMetadata"]["vispipe"]["output_names"]
    assert set(names) == {"probabilities", "label_ids", "scores", "classes"}
    # The signature's keys are the contract's again, pointing at the same tensors.
    signature = model_json["signature"]
    assert {k: v["name"] for k, v in signature["outputs"].items()} == names
    assert list(signature["inputs"]) == ["images"]
    dims = {k: [int(d["size"]) for d in v["tensorShape"]["dim"]]
            for k, v in signature["outputs"].items()}
    assert dims["probabilities"][1] == spec.num_classes and dims["scores"][1] == spec.top_k


def test_name_outputs_does_not_trust_the_converters_keys(tmp_path):
    """A converter that keyed every output by its tensor name still yields the contract."""
    from vispipe.export.tfjs import name_outputs

    def node(name, op, *inputs):
        return {"name": name, "op": op, "input": list(inputs)}

    def entry(name, dtype, *dims):
        return {"name": name, "dtype": dtype,
                "tensorShape": {"dim": [{"size": str(d)} for d in dims]}}

    graph = [node("images", "Placeholder"), node("softmax", "Softmax", "images"),
             node("TopKV2", "TopKV2", "softmax", "k"), node("k", "Const"),
             node("Identity", "Identity", "TopKV2:1"), node("Identity_1", "Identity", "softmax"),
             node("Identity_2", "Identity", "TopKV2")]
    model_json = {"modelTopology": {"node": graph}, "signature": {
        "inputs": {"images:0": entry("images:0", "DT_UINT8", -1, 32, 32, 3)},
        "outputs": {"Identity:0": entry("Identity:0", "DT_INT32", -1, 5),
                    "Identity_1:0": entry("Identity_1:0", "DT_FLOAT", -1, 5),
                    "Identity_2:0": entry("Identity_2:0", "DT_FLOAT", -1, 5)}}}
    (tmp_path / "model.json").write_text(json.dumps(model_json))
    assert name_outputs(str(tmp_path)) == {"label_ids": "Identity:0",
                                           "probabilities": "Identity_1:0",
                                           "scores": "Identity_2:0"}
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["userDefinedMetadata"]["vispipe"]["input_names"] == {"images": "images:0"}
    assert saved["signature"]["outputs"]["probabilities"]["name"] == "Identity_1:0"


def test_inconsistent_outputs_fail_verification():
    from vispipe.export.verify import check_top_k

    probabilities = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], np.float32)
    check_top_k(probabilities, np.array([[1, 2], [0, 2]]), np.array([[0.6, 0.3], [0.5, 0.3]]),
                "ok")
    swapped = -np.sort(-probabilities, axis=1)  # scores read in place of probabilities
    with pytest.raises(RuntimeError, match="label ids do not point at their scores"):
        check_top_k(swapped, np.array([[1, 2], [0, 2]]), np.array([[0.6, 0.3], [0.5, 0.3]]),
                    "artifact")
