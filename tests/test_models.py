"""The model zoo, preprocessing, custom networks and weight transfer."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from vispipe.configs import ModelConfig
from vispipe.data.format import DatasetInfo
from vispipe.models import (
    Preprocess,
    build_classifier,
    build_model,
    get_spec,
    list_models,
    load_custom_network,
    load_pretrained,
    preprocess_config,
    set_backbone_trainable,
)

# Smallest practical test size per network (the canonical sizes are slow).
SMALL_SHAPES = {
    "lenet": (28, 28, 1),
    "alexnet": (67, 67, 3),
    "vgg16": (32, 32, 3),
    "googlenet": (32, 32, 3),
    "resnet20": (32, 32, 3),
    "resnet18": (32, 32, 3),
    "resnet34": (32, 32, 3),
    "resnet50": (32, 32, 3),
    "mobilenet_v2": (32, 32, 3),
    "efficientnet_b0": (32, 32, 3),
}

# At the canonical input size and 1000 classes:
# (count, count trainable weights only?, relative tolerance, source).
PUBLISHED_COUNTS = {
    # Caffe's one-tower table (conv 96-256-384-384-256, fc 4096-4096);
    # the paper's grouped two-GPU network has 60M, within 4%.
    "alexnet": (62_378_344, False, 0.0, "Caffe layer table, no groups"),
    "vgg16": (138_357_544, False, 0.0, "keras.applications.VGG16"),
    # Paper: "about 6.8M" w/o aux heads (Table 1 rounds); 7.0M usually cited.
    "googlenet": (7_000_000, False, 0.01, "commonly cited 7.0M"),
    # torchvision/paper counts exclude BatchNorm moving statistics.
    "resnet18": (11_689_512, True, 0.0, "torchvision resnet18"),
    "resnet34": (21_797_672, True, 0.0, "torchvision resnet34"),
    "resnet50": (25_557_032, True, 0.0, "torchvision resnet50"),
    "mobilenet_v2": (3_538_984, False, 0.0, "keras.applications.MobileNetV2"),
    # keras.applications.EfficientNetB0: 5,330,571, of which 7 are its
    # Normalization layer's statistics, which vispipe leaves out.
    "efficientnet_b0": (5_330_564, False, 0.0, "keras EfficientNetB0 - 7"),
}


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def make_info(tmp_path, shape=(8, 8, 1), num_classes=3, mean_image=None):
    """A DatasetInfo with its mean.npy, as the dataset writer leaves it."""
    height, width, channels = shape
    if mean_image is None:
        mean_image = np.random.default_rng(0).uniform(0, 255, shape)
    np.save(tmp_path / "mean.npy", mean_image.astype("float32"))
    return DatasetInfo(
        path=str(tmp_path),
        classes=[f"class{i}" for i in range(num_classes)],
        height=height,
        width=width,
        channels=channels,
        encoding="png",
        split_counts={"train": 10},
        class_counts={},
        shards={},
        mean_pixel=[100.0 + 10 * c for c in range(channels)],
        std_pixel=[50.0 + 5 * c for c in range(channels)],
    )


def random_images(shape, batch=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype("float32")


@pytest.mark.parametrize("name", [spec.name for spec in list_models()])
def test_every_network_outputs_probabilities_at_a_small_size(name):
    shape = SMALL_SHAPES[name]
    model = build_model(name, shape, num_classes=7)

    probs = model.predict(random_images(shape, batch=2) / 255.0, verbose=0)

    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.layers[-2].name == "classifier"
    assert model.layers[-1].name == "predictions"
    assert model.name == name


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_parameter_count_matches_the_published_one(name):
    expected, trainable_only, tolerance, source = PUBLISHED_COUNTS[name]
    spec = get_spec(name)
    model = build_model(name, spec.input_shape, num_classes=1000)

    count = trainable_count(model) if trainable_only else model.count_params()

    assert count == pytest.approx(expected, rel=tolerance), source


def test_resnet20_has_the_papers_cifar_size():
    # He et al. 2015, Table 6: ResNet-20 has 0.27M parameters (10 classes).
    model = build_model("resnet20", (32, 32, 3), num_classes=10)
    assert trainable_count(model) == pytest.approx(270_000, rel=0.02)


def test_lenet_has_the_caffe_mnist_parameter_count():
    model = build_model("lenet", (28, 28, 1), num_classes=10)
    assert model.count_params() == 431_080


def test_resnet_uses_the_cifar_stem_on_small_images():
    small = build_model("resnet18", (32, 32, 3), num_classes=10)
    large = build_model("resnet18", (96, 96, 3), num_classes=10)

    assert small.get_layer("conv1_conv").kernel.shape[:2] == (3, 3)
    assert small.get_layer("conv1_conv").strides == (1, 1)
    assert "pool1_pool" not in [layer.name for layer in small.layers]
    assert large.get_layer("conv1_conv").kernel.shape[:2] == (7, 7)
    large.get_layer("pool1_pool")


def test_width_multiplier_scales_mobilenet_and_is_refused_elsewhere():
    full = build_model("mobilenet_v2", (32, 32, 3), 10)
    half = build_model("mobilenet_v2", (32, 32, 3), 10, width_multiplier=0.5)
    assert half.count_params() < full.count_params() / 2

    with pytest.raises(ValueError, match="resnet18 has no width multiplier"):
        build_model("resnet18", (32, 32, 3), 10, width_multiplier=0.5)


def test_dropout_is_placed_before_the_classifier():
    model = build_model("resnet18", (32, 32, 3), 10, dropout=0.3)
    assert model.layers[-3].name == "head_dropout"
    assert model.layers[-3].rate == 0.3


def test_too_small_input_names_network_size_and_minimum():
    message = r"alexnet needs images of at least 67x67 pixels, got 32x32"
    with pytest.raises(ValueError, match=message):
        build_model("alexnet", (32, 32, 3), 10)


def test_unknown_network_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Unknown network 'resnet19'.*resnet18.*mobilenet_v2"):
        build_model("resnet19", (32, 32, 3), 10)


def test_fewer_than_two_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        build_model("lenet", (28, 28, 1), 1)


def test_mixed_precision_keeps_float32_probabilities(tmp_path):
    info = make_info(tmp_path, (16, 16, 1))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    finally:
        keras.mixed_precision.set_global_policy("float32")

    assert model.get_layer("preprocess").compute_dtype == "float16"
    assert model.get_layer("classifier").compute_dtype == "float16"
    probs = model.predict(random_images((16, 16, 1)), verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("mode", ["standardize", "pixel", "image", "scale", "none"])
def test_preprocess_modes(mode, tmp_path):
    info = make_info(tmp_path, shape=(4, 5, 3))
    x = random_images((4, 5, 3), batch=2)
    mean = np.asarray(info.mean_pixel, "float32")
    std = np.asarray(info.std_pixel, "float32")
    mean_image = np.load(tmp_path / "mean.npy")
    expected = {
        "standardize": (x - mean) / std,
        "pixel": (x - mean) / 255.0,
        "image": (x - mean_image) / 255.0,
        "scale": x / 255.0,
        "none": x,
    }[mode]

    layer = Preprocess(**preprocess_config(info, mode))

    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_preprocess_accepts_uint8_images():
    layer = Preprocess("pixel", mean=[100.0])
    x = np.full((1, 2, 2, 1), 200, dtype="uint8")
    np.testing.assert_allclose(np.asarray(layer(x)), 100.0 / 255.0, rtol=1e-6)


def test_preprocess_leaves_a_constant_channel_unscaled():
    layer = Preprocess("standardize", mean=[10.0, 20.0], std=[2.0, 0.0])
    out = np.asarray(layer(np.full((1, 1, 1, 2), 30.0, "float32")))
    np.testing.assert_allclose(out.reshape(-1), [10.0, 10.0])


def test_preprocess_rejects_a_mean_image_of_another_shape(tmp_path):
    info = make_info(tmp_path, shape=(8, 8, 1), mean_image=np.zeros((6, 6, 1)))
    with pytest.raises(ValueError, match=r"mean image has shape \(6, 6, 1\).*\(8, 8, 1\)"):
        preprocess_config(info, "image")


def test_preprocess_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        Preprocess("zscore")


@pytest.mark.parametrize("normalization", ["image", "standardize"])
def test_saved_classifier_reloads_with_identical_outputs(tmp_path, normalization):
    info = make_info(tmp_path, shape=(16, 16, 1), num_classes=4)
    model = build_classifier(ModelConfig(name="lenet"), info, normalization)
    path = str(tmp_path / "model.keras")
    x = random_images((16, 16, 1))

    model.save(path)
    keras.backend.clear_session()
    reloaded = keras.saving.load_model(path)

    assert reloaded.name == "vispipe_lenet"
    assert reloaded.input.dtype == "float32" and reloaded.input.name == "image"
    np.testing.assert_array_equal(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    if normalization == "image":
        np.testing.assert_array_equal(
            reloaded.get_layer("preprocess").mean_image.numpy(),
            np.load(tmp_path / "mean.npy"),
        )


def test_classifier_refuses_an_unknown_normalization(tmp_path):
    with pytest.raises(ValueError, match="normalization must be one of"):
        build_classifier(ModelConfig(name="lenet"), make_info(tmp_path, (16, 16, 1)), "zscore")


CUSTOM_LOGITS = """
import keras

def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_custom_network_from_python_gets_a_softmax(tmp_path):
    path = write(tmp_path, "net.py", CUSTOM_LOGITS)
    info = make_info(tmp_path, (8, 8, 1), num_classes=5)

    model = build_classifier(ModelConfig(name="custom", custom_path=path), info, "scale")
    probs = model.predict(random_images((8, 8, 1)), verbose=0)

    assert model.name == "vispipe_custom"
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_custom_network_from_a_saved_model(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "net.keras")

    model = load_custom_network(str(tmp_path / "net.keras"), (8, 8, 1), 3)

    assert model.output.shape == (None, 3)
    with pytest.raises(ValueError, match=r"outputs shape \(None, 3\), expected \(None, 4\)"):
        load_custom_network(str(tmp_path / "net.keras"), (8, 8, 1), 4)


@pytest.mark.parametrize(
    "source, error, message",
    [
        (None, FileNotFoundError, "does not exist"),
        ("x = 1\n", ValueError, "defines no function `build"),
        ("def build(input_shape, num_classes):\n    return 42\n", TypeError,
         "must return a keras.Model, got int"),
        (CUSTOM_LOGITS.replace("keras.Input(input_shape)", "keras.Input((9, 9, 1))"),
         ValueError, r"takes inputs of shape \(None, 9, 9, 1\).*\(None, 8, 8, 1\)"),
        (CUSTOM_LOGITS.replace("Dense(num_classes", "Dense(2"), ValueError,
         r"outputs shape \(None, 2\), expected \(None, 5\)"),
        (CUSTOM_LOGITS.replace('name="logits"', 'activation="relu", name="logits"'),
         ValueError, "must end in a softmax .* has activation 'relu'"),
    ],
)
def test_custom_network_errors(tmp_path, source, error, message):
    path = str(tmp_path / "net.py")
    if source is not None:
        write(tmp_path, "net.py", source)
    with pytest.raises(error, match=message):
        load_custom_network(path, (8, 8, 1), 5)


def test_transfer_from_a_run_with_another_class_count(tmp_path):
    shape = (16, 16, 1)
    source = build_classifier(ModelConfig(name="lenet"), make_info(tmp_path, shape, 10), "pixel")
    run = tmp_path / "run"
    run.mkdir()
    source.save(run / "model.keras")
    conv1 = source.get_layer("conv1").get_weights()

    target_dir = tmp_path / "target"
    target_dir.mkdir()
    target = build_classifier(
        ModelConfig(name="lenet", weights=str(run)), make_info(target_dir, shape, 3), "pixel"
    )

    for got, want in zip(target.get_layer("conv1").get_weights(), conv1):
        np.testing.assert_array_equal(got, want)
    report = load_pretrained(target, str(run))
    assert report.loaded == ["conv1", "conv2", "fc1"]
    assert "classifier" in report.skipped
    assert target.get_layer("classifier").kernel.shape == (500, 3)


def test_transfer_from_a_run_with_other_classes_trains_a_new_head(tmp_path):
    shape = (16, 16, 1)
    source = build_classifier(ModelConfig(name="lenet"), make_info(tmp_path, shape, 3), "pixel")
    run = tmp_path / "run"
    run.mkdir()
    source.save(run / "model.keras")
    (run / "labels.txt").write_text("cat\ndog\nbird\n")

    other = build_classifier(ModelConfig(name="lenet"), make_info(tmp_path, shape, 3), "pixel")
    report = load_pretrained(other, str(run), classes=["car", "ship", "truck"])
    assert report.loaded == ["conv1", "conv2", "fc1"]
    assert "other classes (cat, dog, bird)" in report.skipped["classifier"]
    same = load_pretrained(other, str(run), classes=["cat", "dog", "bird"])
    assert same.loaded == ["conv1", "conv2", "fc1", "classifier"]


def test_transfer_from_weights_file_and_newest_checkpoint(tmp_path):
    shape = (16, 16, 1)
    info = make_info(tmp_path, shape, 4)
    source = build_classifier(ModelConfig(name="lenet"), info, "scale")
    source.save_weights(tmp_path / "w.weights.h5")
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    source.save(checkpoints / "epoch-2.keras")
    older = build_classifier(ModelConfig(name="lenet"), info, "scale")
    older.save(checkpoints / "epoch-1.keras")
    os.utime(checkpoints / "epoch-1.keras", (1, 1))

    for path in (tmp_path / "w.weights.h5", tmp_path / "run"):
        target = build_classifier(ModelConfig(name="lenet"), info, "scale")
        report = load_pretrained(target, str(path))
        assert report.loaded == ["conv1", "conv2", "fc1", "classifier"]
        x = random_images(shape)
        np.testing.assert_array_equal(target.predict(x, verbose=0), source.predict(x, verbose=0))


def test_transfer_between_different_networks_is_an_error(tmp_path):
    source = build_model("lenet", (32, 32, 3), 3)
    source.save(tmp_path / "lenet.keras")
    target = build_model("resnet18", (32, 32, 3), 3)
    with pytest.raises(ValueError, match="No layer of model 'resnet18' matched"):
        load_pretrained(target, str(tmp_path / "lenet.keras"))


def test_frozen_backbone_trains_only_the_head(tmp_path):
    info = make_info(tmp_path, (8, 8, 3), 3)
    model = build_classifier(ModelConfig(name="resnet18"), info, "scale")
    bn = model.get_layer("conv2_block1_1_bn")
    moving_mean = bn.moving_mean.numpy().copy()
    conv = model.get_layer("conv1_conv").kernel.numpy().copy()
    head = model.get_layer("classifier").kernel.numpy().copy()

    set_backbone_trainable(model, False)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(random_images((8, 8, 3), batch=8), np.arange(8) % 3, epochs=1, verbose=0)

    assert [w.path for w in model.trainable_weights] == ["classifier/kernel", "classifier/bias"]
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving_mean)
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), conv)
    assert not np.array_equal(model.get_layer("classifier").kernel.numpy(), head)

    set_backbone_trainable(model, True)
    assert model.get_layer("conv1_conv").trainable and bn.trainable


def test_lenet_learns_random_labels(tmp_path):
    keras.utils.set_random_seed(0)
    info = make_info(tmp_path, (28, 28, 1), 10)
    model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x = random_images((28, 28, 1), batch=32)
    y = np.arange(32) % 10

    history = model.fit(x, y, batch_size=32, epochs=15, verbose=0)

    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
