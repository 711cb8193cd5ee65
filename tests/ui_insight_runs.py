"""Two small real runs and an imbalanced dataset in their own VISPIPE_HOME, for
the UI tests of issue 17 (compare, Grad-CAM, imbalance)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from insight_data import copy_classes
from vispipe.configs import DatasetConfig, ImageOptions, LRPolicyConfig, ModelConfig, TrainConfig
from vispipe.registry import Registry

MINORITY = ("2", "7")


@dataclass(frozen=True)
class Runs:
    home: str
    dataset_id: int
    run_ids: tuple[int, int]
    digit: str  # A test image


def make_runs(mnist_small: str, folder: str) -> Runs:
    """MNIST with digits 2 and 7 cut to 6 images (of 30), and LeNet trained on it twice:
    SGD and Adam, 2 epochs each."""
    from vispipe.data.create import create_dataset
    from vispipe.train import train

    home = os.path.join(folder, "home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", home)
        source = copy_classes(mnist_small, "train", os.path.join(folder, "photos"),
                              {c: 6 for c in MINORITY})
        info = create_dataset(DatasetConfig(
            source=source, output=os.path.join(folder, "digits"), val_percent=25,
            image=ImageOptions(height=28, width=28, channels=1), workers=1), progress=False)
        registry = Registry.open()
        dataset_id = registry.add("dataset", "digits", info.path, {})
        registry.finish(dataset_id, "completed", {})
        ids = []
        for name, optimizer, lr in (("sgd-run", "sgd", 0.01), ("adam-run", "adam", 0.001)):
            run_dir = os.path.join(folder, name)
            train(info.path, run_dir, ModelConfig(name="lenet"), TrainConfig(
                epochs=2, batch_size=16, optimizer=optimizer, lr=LRPolicyConfig(base_lr=lr),
                mixed_precision="off", log_every_steps=5), name=name, progress=False)
            ids.append(next(e.id for e in registry.list("run") if e.path == run_dir))
    test_dir = os.path.join(mnist_small, "test", "3")
    return Runs(home, dataset_id, tuple(ids), os.path.join(test_dir, sorted(os.listdir(test_dir))[0]))
