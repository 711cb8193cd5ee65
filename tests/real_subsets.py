"""Small real datasets cut from the shared CIFAR-10 archive, for training tests.

The images are CIFAR-10's own JPEGs (32x32, resized by vispipe's dataset
writer when a test asks for more); nothing is synthesised.
"""

from __future__ import annotations

import os
import tarfile

import pytest

from conftest import shared_datasets_dir
from vispipe.configs import DatasetConfig, ImageOptions
from vispipe.data import create_dataset

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


def cifar_archive() -> str:
    path = os.path.join(shared_datasets_dir(), "cifar10-jpg.tar.gz")
    if not os.path.isfile(path):
        pytest.skip(f"CIFAR-10 archive not found at {path} (set VISPIPE_SHARED_DATASETS)")
    return path


def cifar_dataset(dest: str, classes: tuple[str, ...], train_per_class: int,
                  val_per_class: int, size: int = 32) -> str:
    """A vispipe dataset of CIFAR-10 classes: train from its train split, val from its test split.

    Args:
        dest: Folder for the unpacked images and the dataset (`dest/dataset`).
        classes: CIFAR-10 class names.
        train_per_class: Training images per class (the archive's first ones).
        val_per_class: Validation images per class.
        size: Stored height and width (bilinear squash from 32x32).

    Returns:
        The dataset folder.
    """
    wanted = {"train": train_per_class, "test": val_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(cifar_archive()) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[2] not in classes:
                continue
            key = (parts[1], parts[2])
            if parts[1] in wanted and taken.get(key, 0) < wanted[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                members.append(member)
        tar.extractall(dest, members=members)
    root = os.path.join(dest, "cifar10-jpg")
    config = DatasetConfig(
        output=os.path.join(dest, "dataset"), train_dir=os.path.join(root, "train"),
        val_dir=os.path.join(root, "test"), workers=2,
        image=ImageOptions(height=size, width=size, channels=3),
    )
    return create_dataset(config, progress=False).path
