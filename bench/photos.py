"""Camera-photo-sized JPEGs made from the shared CIFAR-10 images, for the benchmarks.

Each 32x32 CIFAR-10 training image is upscaled (bicubic) to 500x375 or
1024x768 (alternately), given a little Gaussian sensor-like grain (sigma 4) so
that its entropy, and therefore its JPEG decode cost, resembles a real photo's
rather than a smooth upscale's, and saved at quality 90 with 4:2:0 chroma, as
cameras do. The folder has one sub-folder per class.

Example:

```python
photos = make_photos("/tmp/bench-photos", 3000)
print(photos.root, photos.count, photos.mean_bytes)
```
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import tarfile

import numpy as np
from PIL import Image

__all__ = ["PHOTO_SIZES", "PhotoSet", "cifar_archive", "make_photos"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_SIZES = ((500, 375), (1024, 768))
_GRAIN_SIGMA = 4.0
_QUALITY = 90
_DONE = "photos.json"


@dataclasses.dataclass(frozen=True)
class PhotoSet:
    """A folder of generated photos.

    Attributes:
        root: Folder with one sub-folder of JPEGs per class.
        count: Number of photos.
        mean_bytes: Mean JPEG file size.
        sizes: The (width, height) sizes used, alternately.
    """

    root: str
    count: int
    mean_bytes: float
    sizes: tuple[tuple[int, int], ...] = PHOTO_SIZES


def cifar_archive() -> str:
    """The shared CIFAR-10 JPEG tarball (`$VISPIPE_SHARED_DATASETS` or ../shared/datasets)."""
    shared = os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(
        os.path.dirname(REPO), "shared", "datasets"
    )
    path = os.path.join(shared, "cifar10-jpg.tar.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 archive not found at {path} (set VISPIPE_SHARED_DATASETS)")
    return path


def _read_cifar(count: int) -> list[tuple[str, str, bytes]]:
    """(class, name, JPEG bytes) of `count` training images, classes balanced."""
    per_class = -(-count // 10)
    taken: dict[str, int] = {}
    found = []
    with tarfile.open(cifar_archive()) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10-jpg/train/<class>/<n>.jpg
            if not member.isfile() or len(parts) != 4 or parts[1] != "train":
                continue
            if taken.get(parts[2], 0) < per_class:
                taken[parts[2]] = taken.get(parts[2], 0) + 1
                found.append((parts[2], parts[3], tar.extractfile(member).read()))
    return found[:count]


def _make_one(task: tuple[int, str, str, bytes, str]) -> int:
    index, label, name, data, root = task
    import io

    width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
    small = Image.open(io.BytesIO(data)).convert("RGB")
    scene = np.asarray(small.resize((width, height), Image.BICUBIC), np.float32)
    grain = np.random.default_rng(index).normal(0.0, _GRAIN_SIGMA, scene.shape)
    photo = Image.fromarray(np.clip(scene + grain, 0, 255).astype(np.uint8))
    path = os.path.join(root, label, f"{index:05d}-{name}")
    photo.save(path, "JPEG", quality=_QUALITY)
    return os.path.getsize(path)


def make_photos(dest: str, count: int) -> PhotoSet:
    """Makes (or reuses, when `dest` already holds them) `count` photos.

    Args:
        dest: Folder to hold the photos (`dest/photos/<class>/*.jpg`).
        count: Number of photos, at most 50,000 (CIFAR-10's training set).

    Returns:
        The `PhotoSet`.
    """
    root = os.path.join(dest, "photos")
    done = os.path.join(dest, _DONE)
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as f:
            saved = json.load(f)
        if saved["count"] == count:
            return PhotoSet(root, count, saved["mean_bytes"])
    shutil.rmtree(root, ignore_errors=True)
    sources = _read_cifar(count)
    for label in {label for label, _, _ in sources}:
        os.makedirs(os.path.join(root, label), exist_ok=True)
    tasks = [(i, label, name, data, root) for i, (label, name, data) in enumerate(sources)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        sizes = pool.map(_make_one, tasks, chunksize=32)
    mean_bytes = round(float(np.mean(sizes)), 1)
    with open(done, "w", encoding="utf-8") as f:
        json.dump({"count": len(sizes), "mean_bytes": mean_bytes}, f)
    return PhotoSet(root, len(sizes), mean_bytes)
