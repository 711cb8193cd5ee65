"""ImageNet weights: files as keras.applications publishes them, layouts, preprocessing.

No test downloads anything. Weight files are made here the way the published
ones were: a `keras.applications` model saved in the legacy HDF5 layout, with
random values (not its initial ones, so that a swapped layer or array shows).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from test_train import write_pattern_dataset
from vispipe.configs import ModelConfig
from vispipe.data.format import DatasetInfo
from vispipe.models import (
    IMAGENET_NETWORKS,
    Preprocess,
    WeightsFileError,
    build_classifier,
)
from vispipe.models.imagenet import load_imagenet_weights, read_weights_file
from vispipe.models.imagenet_files import PublishedWeights, locate_weights, published_weights

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).

# network -> (keras.applications class, module with preprocess_input)
KERAS_APPS = {
    "vgg16": ("VGG16", "vgg16"),
    "resnet50": ("ResNet50", "resnet"),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
}
# Any address that refuses connections: urllib then fails as offline.
DEAD_PROXY = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (every URL goes to a dead proxy) and an empty Keras cache."""
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, DEAD_PROXY)
    for name in ("no_proxy", "NO_PROXY", "VISPIPE_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "keras-home"
    cache.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(cache))
    return cache


def keras_application(network: str, size: int, width: float = 1.0, weights=None) -> keras.Model:
    kwargs = {"alpha": width} if network == "mobilenet_v2" else {}
    cls = getattr(keras.applications, KERAS_APPS[network][0])
    return cls(include_top=False, weights=weights, input_shape=(size, size, 3),
               pooling="avg" if weights else None, **kwargs)


def write_keras_weights_file(network: str, folder: str, size: int = 32,
                             width: float = 1.0, seed: int = 0) -> str:
    """The network's published file, by name and layout, holding random weights."""
    model = keras_application(network, size, width)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name, shape = variable.path.rsplit("/", 1)[-1], tuple(variable.shape)
        if name == "count":
            continue
        if name in ("gamma", "moving_variance", "variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif variable.path.startswith("normalization") and name == "mean":
            value = rng.uniform(0.4, 0.6, shape)
        elif len(shape) <= 1:
            value = rng.normal(0.0, 0.1, shape)
        else:
            value = keras.ops.convert_to_numpy(variable) * rng.uniform(0.8, 1.2, shape)
        variable.assign(value.astype("float32"))
    path = os.path.join(folder, published_weights(network, width, (size, size)).file_name)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def dataset_info(folder, size: int, channels: int = 3, classes: int = 3) -> DatasetInfo:
    return DatasetInfo(
        path=str(folder), classes=[f"c{i}" for i in range(classes)], height=size, width=size,
        channels=channels, encoding="png", split_counts={"train": 1}, class_counts={},
        shards={}, mean_pixel=[120.0] * channels, std_pixel=[60.0] * channels,
    )


@pytest.mark.parametrize("network,size,width,channels", [
    ("vgg16", 32, 1.0, 3),
    ("resnet50", 48, 1.0, 1),
    ("mobilenet_v2", 96, 0.35, 3),
    ("efficientnet_b0", 40, 1.0, 3),
])
def test_features_equal_keras_applications_with_its_preprocess_input(
        network, size, width, channels, tmp_path, monkeypatch):
    path = write_keras_weights_file(network, str(tmp_path), size, width)
    requested = []

    def keras_get_file(fname, *args, **kwargs):  # Keras' download, served from the same file.
        requested.append(fname)
        return path

    monkeypatch.setattr(file_utils, "get_file", keras_get_file)
    reference = keras_application(network, size, width, weights="imagenet")
    assert requested == [os.path.basename(path)]  # Keras asks for the same file name.

    cfg = ModelConfig(name=network, weights="imagenet", weights_dir=str(tmp_path),
                      width_multiplier=width)
    model = build_classifier(cfg, dataset_info(tmp_path, size, channels), "standardize")
    images = np.random.default_rng(1).integers(0, 256, (3, size, size, channels), np.uint8)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    got = features(images.astype("float32"))
    rgb = np.repeat(images, 3, axis=-1) if channels == 1 else images
    preprocess_input = getattr(keras.applications, KERAS_APPS[network][1]).preprocess_input
    want = reference(preprocess_input(rgb.copy()))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                               keras.ops.convert_to_numpy(want), rtol=0, atol=1e-4)

    arrays = read_weights_file(path)
    backbone = {layer.name for layer in model.layers
                if layer.weights and layer.name not in ("preprocess", "classifier")}
    assert backbone and backbone <= set(arrays)
    for name in backbone:
        for got_array, want_array in zip(model.get_layer(name).get_weights(), arrays[name]):
            np.testing.assert_array_equal(got_array, want_array)
    report = load_imagenet_weights(model, arrays, path)
    assert set(report.loaded) == backbone and list(report.skipped) == ["classifier"]


def test_mobilenet_file_follows_width_and_size_as_keras_does():
    assert published_weights("mobilenet_v2", 0.5, (128, 128)).file_name == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_128_no_top.h5")
    for size in ((64, 64), (96, 128), (300, 300)):  # Unpublished: the 224 file.
        assert published_weights("mobilenet_v2", 1.4, size).file_name.endswith("_1.4_224_no_top.h5")
    with pytest.raises(ValueError, match="published for width multipliers 0.35, 0.5"):
        published_weights("mobilenet_v2", 0.6)
    resnet = published_weights("resnet50")
    assert resnet.url == ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                          "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert resnet.file_hash == "4d473c1dd8becc155b73f8504c6f6626"


@pytest.mark.parametrize("network", ["lenet", "alexnet", "googlenet", "resnet18", "resnet34",
                                     "resnet20"])
def test_networks_without_published_weights_name_those_with(network, tmp_path):
    with pytest.raises(ValueError, match=f"{network} has no published ImageNet weights; "
                                         "networks with ImageNet weights: vgg16, resnet50, "
                                         "mobilenet_v2, efficientnet_b0"):
        build_classifier(ModelConfig(name=network, weights="imagenet"),
                         dataset_info(tmp_path, 64), "standardize")


def test_offline_with_an_empty_cache_fails_in_one_line_before_any_work(offline, tmp_path):
    dataset = write_pattern_dataset(str(tmp_path / "data"), {"train": 8})
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "vispipe", "train", "--dataset", dataset, "--run", str(run_dir),
         "--model", "resnet50", "--weights", "imagenet", "--quiet"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "vispipe train" in line]
    assert len(lines) == 1 and not result.stdout.strip()
    message = lines[0]
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert os.path.join(str(offline), "models") in message and "--weights-dir" in message
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_corrupt_cached_file_fails_its_hash_check_and_loads_nothing(offline, tmp_path):
    good = write_keras_weights_file("vgg16", str(tmp_path))
    models = offline / "models"
    models.mkdir()
    with open(good, "rb") as f:
        data = f.read()
    cached = models / os.path.basename(good)
    cached.write_bytes(data[: len(data) // 2])  # An interrupted download.

    with pytest.raises(WeightsFileError, match=r"fails its hash check \(expected "
                                               "6d6bbae143d832006294945121d1f1fc, got"):
        build_classifier(ModelConfig(name="vgg16", weights="imagenet"),
                         dataset_info(tmp_path, 32), "standardize")
    assert cached.stat().st_size == len(data) // 2  # Left for the user to inspect.


def test_cached_file_with_the_published_hash_is_used_without_network(offline, tmp_path):
    models = offline / "models"
    models.mkdir()
    path = write_keras_weights_file("vgg16", str(models))
    with open(path, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    published = PublishedWeights("vgg16", os.path.basename(path), "https://example.invalid/w.h5",
                                 md5, "caffe")
    assert locate_weights(published) == path
    with pytest.raises(WeightsFileError, match="fails its hash check"):
        locate_weights(PublishedWeights(published.network, published.file_name, published.url,
                                        "0" * 32, "caffe"))


def test_weights_dir_from_the_environment_is_taken_as_given(offline, tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    path = write_keras_weights_file("vgg16", str(folder))  # Not the published hash.
    monkeypatch.setenv("VISPIPE_WEIGHTS_DIR", str(folder))
    assert locate_weights(published_weights("vgg16")) == path


def test_truncated_or_foreign_files_change_no_weight(tmp_path):
    path = write_keras_weights_file("vgg16", str(tmp_path))
    cfg = ModelConfig(name="vgg16", weights="imagenet", weights_dir=str(tmp_path))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsFileError, match="truncated or corrupt"):
        build_classifier(cfg, dataset_info(tmp_path, 32), "standardize")

    with open(path, "wb") as f:
        f.write(data)
    model = build_classifier(cfg, dataset_info(tmp_path, 32), "standardize")
    before = [w.copy() for w in model.get_weights()]
    arrays = read_weights_file(path)
    arrays["block5_conv3"] = [arrays["block5_conv3"][0][..., :256], arrays["block5_conv3"][1]]
    del arrays["block1_conv2"]
    with pytest.raises(WeightsFileError, match="block1_conv2 is not in the file; block5_conv3 "
                                               "has shapes"):
        load_imagenet_weights(model, {k: [v + 1 for v in a] for k, a in arrays.items()}, path)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode,module", [("caffe", "vgg16"), ("tf", "mobilenet_v2")])
def test_preprocess_reproduces_keras_preprocess_input(mode, module):
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), np.uint8)
    want = getattr(keras.applications, module).preprocess_input(images.copy())
    got = Preprocess(mode)(images.astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, atol=1e-5)
    gray = Preprocess(mode, to_rgb=True)(images[..., :1].astype("float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gray),
        getattr(keras.applications, module).preprocess_input(
            np.repeat(images[..., :1], 3, axis=-1)), atol=1e-5)


def test_imagenet_model_saves_and_reloads_with_its_preprocessing(tmp_path):
    write_keras_weights_file("mobilenet_v2", str(tmp_path), 32, 0.35)
    cfg = ModelConfig(name="mobilenet_v2", weights="imagenet", weights_dir=str(tmp_path),
                      width_multiplier=0.35)
    model = build_classifier(cfg, dataset_info(tmp_path, 32, channels=1), "standardize")
    assert model.get_layer("preprocess").get_config()["mode"] == "tf"
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_vispipe_models_marks_the_networks_with_imagenet_weights(capsys):
    from vispipe.cli import main

    assert main(["models", "--json"]) == 0
    import json

    listed = {m["name"]: m["imagenet_weights"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert {name for name, has in listed.items() if has} == set(IMAGENET_NETWORKS)
    assert main(["models"]) == 0
    assert "ImageNet weights" in capsys.readouterr().out
