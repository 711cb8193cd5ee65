"""Real MNIST subsets as arrays and folders for the insight tests (Grad-CAM,
imbalance, mislabels, TTA, tune), unpacked once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from conftest import extract_subset, shared_datasets_dir

_EXTRACTED: dict[tuple[str, int], str] = {}


def extracted(archive_name: str, per_class: int) -> str:
    """`<tmp>/<name>-png|jpg` with the first `per_class` files of each class, cached."""
    key = (archive_name, per_class)
    if key not in _EXTRACTED:
        archive = os.path.join(shared_datasets_dir(), archive_name)
        if not os.path.isfile(archive):
            pytest.skip(f"{archive} not found (set VISPIPE_SHARED_DATASETS)")
        dest = tempfile.mkdtemp(prefix=f"insight-{per_class}-")
        extract_subset(archive, dest, per_class=per_class)
        (folder,) = os.listdir(dest)
        _EXTRACTED[key] = os.path.join(dest, folder)
    return _EXTRACTED[key]


def load_split(root: str, split: str, per_class: int | None = None, mode: str = "L"):
    """`(images uint8 [N, H, W, C], labels int64 [N], classes)` of `root/split/<class>/`."""
    classes = sorted(os.listdir(os.path.join(root, split)))
    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(os.listdir(os.path.join(root, split, name)))[:per_class]
        for file in files:
            array = np.asarray(Image.open(os.path.join(root, split, name, file)).convert(mode))
            images.append(array[..., None] if array.ndim == 2 else array)
            labels.append(index)
    return np.stack(images), np.array(labels, np.int64), classes


def copy_classes(root: str, split: str, dest: str, keep: dict[str, int]) -> str:
    """Copies `root/split/<class>` to `dest/<class>`, at most `keep[class]` files each."""
    for name in sorted(os.listdir(os.path.join(root, split))):
        files = sorted(os.listdir(os.path.join(root, split, name)))[: keep.get(name)]
        os.makedirs(os.path.join(dest, name))
        for file in files:
            shutil.copy(os.path.join(root, split, name, file), os.path.join(dest, name, file))
    return dest
