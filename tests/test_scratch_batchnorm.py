"""From scratch on a small real colour set, BatchNorm networks must work in inference mode.

Four CIFAR-10 classes, 200 training and 50 validation images each, at 72x72,
5 epochs. With `keras.applications`' BatchNorm momentum (0.999 for
MobileNetV2, 0.99 for EfficientNet) and no recomputation, the moving
statistics still hold most of their initial values after 125 steps and the
model predicts one class in inference mode: validation sits at chance while
training accuracy rises (the last test reproduces it, and the warning).
With vispipe's defaults (momentum suited to the run, precise BN before every
validation and save), validation is well above chance and the final model
classifies its own training images, in inference mode, at least as well as
training accuracy says.

The heaviest file of the suite: about 20 worker minutes in a full run on 2
cores (resnet50 alone 11). At 64x64, the issue's smallest size, resnet50 took
48 minutes in a full run, so the set stays at 72x72.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from real_subsets import cifar_dataset
from vispipe.configs import AugmentConfig, LRPolicyConfig, ModelConfig, TrainConfig
from vispipe.data.inputs import load_arrays
from vispipe.train import load_run_model, train
from vispipe.train.run_folder import read_run_info

pytestmark = pytest.mark.slow(minutes=20)  # Its worker minutes in a full run: the first file (see conftest).

CLASSES = ("airplane", "automobile", "frog", "ship")
CHANCE = 1 / len(CLASSES)


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory) -> str:
    return cifar_dataset(str(tmp_path_factory.mktemp("cifar4")), CLASSES, train_per_class=200,
                         val_per_class=50, size=72)


def solver(**overrides) -> TrainConfig:
    values = dict(epochs=5, batch_size=32, optimizer="adam",
                  lr=LRPolicyConfig(policy="onecycle", base_lr=2e-3),
                  augment=AugmentConfig(flip_horizontal=True), mixed_precision="off", seed=1,
                  log_every_steps=1000)
    values.update(overrides)
    return TrainConfig(**values)


def inference_accuracy(run_dir: str, dataset: str, split: str) -> float:
    model = load_run_model(run_dir)
    images, labels = load_arrays(dataset, split)
    probabilities = model.predict(images.astype("float32"), batch_size=64, verbose=0)
    return float(np.mean(probabilities.argmax(axis=1) == labels))


@pytest.mark.parametrize("network", ["mobilenet_v2", "efficientnet_b0", "resnet50"])
def test_scratch_training_validates_well_above_chance(network, colour_set, tmp_path):
    result = train(colour_set, str(tmp_path / network), ModelConfig(name=network), solver(),
                   progress=False)
    train_accuracy = [r["accuracy"] for r in result.history]
    val_accuracy = [r["val_accuracy"] for r in result.history]
    on_train = inference_accuracy(result.run_dir, colour_set, "train")
    print(json.dumps({"network": network, "train_accuracy": train_accuracy,
                      "val_accuracy": val_accuracy, "train_split_in_inference_mode": on_train,
                      "duration_s": result.duration_s}))
    assert val_accuracy[-1] >= CHANCE + 0.2
    assert on_train >= train_accuracy[-1] - 0.05  # The statistics match the weights.
    assert read_run_info(result.run_dir).warnings == []


def test_keras_momentum_without_recomputation_is_caught_at_chance(colour_set, tmp_path):
    keras_defaults = solver(epochs=3, bn_momentum=0.999, precise_bn_batches=0)
    result = train(colour_set, str(tmp_path / "broken"), ModelConfig(name="mobilenet_v2"),
                   keras_defaults, progress=False)
    val_accuracy = [r["val_accuracy"] for r in result.history]
    assert all(abs(v - CHANCE) < 0.02 for v in val_accuracy[1:])
    warnings = read_run_info(result.run_dir).warnings
    assert [w.kind for w in warnings] == ["val_accuracy_at_chance"]
    assert "BatchNorm moving statistics" in warnings[0].message
    assert os.path.isfile(result.model_path)
