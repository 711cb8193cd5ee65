"""CIFAR-10 subsets for the benchmarks: real images from the shared archive, nothing synthesised."""

from __future__ import annotations

import os
import tarfile

__all__ = ["CIFAR_CLASSES", "cifar_subset"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


def cifar_subset(root: str, classes: tuple[str, ...], train_per_class: int,
                 val_per_class: int, size: int) -> str:
    """A vispipe dataset of CIFAR-10 classes: train from its train split, val from its test split.

    Args:
        root: Folder for the unpacked images and the dataset (`root/dataset`).
        classes: CIFAR-10 class names.
        train_per_class: Training images per class (the archive's first ones).
        val_per_class: Validation images per class.
        size: Stored height and width (squashed from 32x32).

    Returns:
        The dataset folder.
    """
    from vispipe.configs import DatasetConfig, ImageOptions
    from vispipe.data.create import create_dataset

    shared = os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(REPO, "..", "shared",
                                                                       "datasets")
    wanted = {"train": train_per_class, "test": val_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(os.path.join(shared, "cifar10-jpg.tar.gz")) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[2] not in classes:
                continue
            key = (parts[1], parts[2])
            if parts[1] in wanted and taken.get(key, 0) < wanted[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                members.append(member)
        tar.extractall(root, members=members)
    images = os.path.join(root, "cifar10-jpg")
    return create_dataset(DatasetConfig(
        output=os.path.join(root, "dataset"), train_dir=os.path.join(images, "train"),
        val_dir=os.path.join(images, "test"), workers=2,
        image=ImageOptions(height=size, width=size, channels=3)), progress=False).path
