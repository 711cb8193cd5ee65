"""Shared test set-up: an isolated VISPIPE_HOME and the real shared datasets."""

from __future__ import annotations

import os
import tarfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_datasets_dir() -> str:
    """`$VISPIPE_SHARED_DATASETS`, else `../shared/datasets` beside the project."""
    return os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(
        os.path.dirname(REPO_ROOT), "shared", "datasets"
    )


@pytest.fixture(autouse=True)
def vispipe_home(tmp_path_factory, monkeypatch):
    """Every test writes its registry and archive cache into a private folder."""
    home = tmp_path_factory.mktemp("vispipe-home")
    monkeypatch.setenv("VISPIPE_HOME", str(home))
    monkeypatch.delenv("VISPIPE_CACHE", raising=False)
    return home


def extract_subset(archive: str, dest: str, per_class: int, splits=("train", "test")) -> str:
    """Unpacks the first `per_class` files of each class folder of a tarball."""
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in splits:
                continue
            key = "/".join(parts[:3])
            if taken.get(key, 0) < per_class:
                taken[key] = taken.get(key, 0) + 1
                members.append(member)
        tar.extractall(dest, members=members)
    return dest


@pytest.fixture(scope="session")
def mnist_archive() -> str:
    path = os.path.join(shared_datasets_dir(), "mnist-png.tar.gz")
    if not os.path.isfile(path):
        pytest.skip(f"MNIST archive not found at {path} (set VISPIPE_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def mnist_small(mnist_archive, tmp_path_factory) -> str:
    """A real MNIST subset: mnist-png/{train,test}/<digit>/ with 30 images each."""
    dest = tmp_path_factory.mktemp("mnist-small")
    extract_subset(mnist_archive, str(dest), per_class=30)
    return os.path.join(str(dest), "mnist-png")


PIXEL_CLASSES = ["cat", "dog", "bird"]
PIXEL_SIZE = 16


@pytest.fixture(scope="module")
def pixel_model():
    """A 16x16x1 -> 3-class model whose probabilities are a softmax of the first
    three pixels / 25, so each test image sets its own prediction."""
    import keras

    inputs = keras.Input((PIXEL_SIZE, PIXEL_SIZE, 1))
    flat = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="pick")(flat)
    model = keras.Model(inputs, outputs, name="pixel_model")
    kernel = np.zeros((PIXEL_SIZE * PIXEL_SIZE, 3), np.float32)
    kernel[[0, 1, 2], [0, 1, 2]] = 1 / 25
    model.get_layer("pick").set_weights([kernel, np.zeros(3, np.float32)])
    return model


def _slow_minutes(item: pytest.Item) -> float | None:
    """The `slow` marker's `minutes` (0 when not given), or None for a file not marked slow."""
    marker = item.get_closest_marker("slow")
    return None if marker is None else float(marker.kwargs.get("minutes", 0))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked `slow` run first, the longest first; each file's tests stay together and in order.

    Under `make test` (`-n 2 --dist loadfile`) each worker takes whole files in
    this order; with a long real-training file at the end, one worker would be
    left running it alone while the other sat idle. `slow(minutes=N)` gives a
    file's worker minutes in a full run, so that the longest start first.
    """
    minutes = {item.path: _slow_minutes(item) for item in items}
    # Stable: the order within a file, and among equals, is kept.
    items.sort(key=lambda item: (minutes[item.path] is None, -(minutes[item.path] or 0)))
