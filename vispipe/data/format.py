"""The on-disk layout of a vispipe dataset, shared by its writer and readers.

A dataset folder holds:

- `<split>-<index:05d>-of-<count:05d>.tfrecord`: shards of `tf.train.Example`
  records with the features named below, for each split (`train`, `val`,
  `test`);
- `labels.txt`: one class name per line, line number = label id;
- `mean.npy`: the mean training image, float32, shape (height, width, channels);
- `dataset.json`: everything else (see `DatasetInfo`), written last, so a
  folder without it is not a complete dataset.

Example:

```python
info = read_dataset_info("datasets/mnist")
print(info.num_classes, info.split_counts["train"])
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from vispipe.configs import CHANNELS, RESIZE_MODES, SPLITS, choices
from vispipe.data.balance import imbalance_ratios

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "INFO_FILE",
    "LABELS_FILE",
    "MEAN_FILE",
    "FEATURE_IMAGE",
    "FEATURE_FORMAT",
    "FEATURE_HEIGHT",
    "FEATURE_WIDTH",
    "FEATURE_CHANNELS",
    "FEATURE_LABEL",
    "FEATURE_FILENAME",
    "ImageInput",
    "DatasetInfo",
    "IncompleteDatasetError",
    "read_dataset_info",
    "shard_name",
]

FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
LABELS_FILE = "labels.txt"
MEAN_FILE = "mean.npy"

FEATURE_IMAGE = "image/encoded"  # PNG or JPEG bytes, or raw uint8 HWC bytes
FEATURE_FORMAT = "image/format"  # b"png", b"jpeg" or b"raw"
FEATURE_HEIGHT = "image/height"
FEATURE_WIDTH = "image/width"
FEATURE_CHANNELS = "image/channels"
FEATURE_LABEL = "image/class/label"
FEATURE_FILENAME = "image/filename"


class IncompleteDatasetError(FileNotFoundError):
    """The folder is not a complete vispipe dataset."""


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard `index` of `count` of a split."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


@dataclass(frozen=True)
class ImageInput:
    """The images a model takes, and how an image file becomes one.

    What a consumer of a dataset or a run needs to load a new image exactly
    as the dataset's were made (`vispipe.data.images.load_image` takes it);
    how the shards encode the pixels is the dataset's own business.

    Attributes:
        height, width: Pixels.
        channels: 1 (grayscale) or 3 (color).
        resize_mode: One of `vispipe.configs.RESIZE_MODES`.

    Example:

    ```python
    image = read_dataset_info("datasets/mnist").image
    array, note = load_image("digit.png", image)
    ```
    """

    height: int
    width: int
    channels: int = choices(CHANNELS)
    resize_mode: str = choices(RESIZE_MODES)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass
class DatasetInfo:
    """The contents of `dataset.json`.

    Attributes:
        path: The dataset folder (not stored; filled in when read).
        classes: Class names, index = label id.
        height, width, channels, encoding: How images are stored.
        split_counts: Images per split.
        class_counts: Per split, images per class name.
        shards: Per split, shard file names relative to `path`.
        mean_pixel: Per-channel mean of the training images (0-255 scale).
        std_pixel: Per-channel standard deviation (0-255 scale).
        rejected: Files left out, each `{"path": ..., "reason": ...}`.
        converted: Files kept after a conversion, `{"path", "from"}` each.
        source: How the dataset was made (source kind and paths).
        options: The resolved `DatasetConfig` as a dict.
        content_hash: SHA-256 over the shards' contents, in order.
        created: ISO-8601 UTC creation time.
        duration_s: Seconds the creation took.
    """

    path: str
    classes: list[str]
    height: int
    width: int
    channels: int
    encoding: str
    split_counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    shards: dict[str, list[str]]
    mean_pixel: list[float]
    std_pixel: list[float]
    rejected: list[dict[str, str]] = field(default_factory=list)
    converted: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    created: str = ""
    duration_s: float = 0.0
    version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def image(self) -> ImageInput:
        """Size, channels and resize mode of the images (from `options`).

        Raises:
            ValueError: `dataset.json` does not record the resize mode.
        """
        resize_mode = (self.options.get("image") or {}).get("resize_mode")
        if resize_mode is None:
            raise ValueError(
                f"{os.path.join(self.path, INFO_FILE)}: options.image.resize_mode is missing; "
                "it says how an image file was resized, which loading a new image needs."
            )
        return ImageInput(self.height, self.width, self.channels, resize_mode)

    @property
    def splits(self) -> list[str]:
        """Splits that hold at least one image, in canonical order."""
        return [s for s in SPLITS if self.split_counts.get(s, 0) > 0]

    def summary(self) -> dict[str, Any]:
        """What the registry and `vispipe dataset create --json` report.

        `imbalance_ratio`: per split, largest / smallest class count (None
        when a class has no image), see `vispipe.data.balance`.
        """
        return {
            "dataset_dir": self.path, "classes": self.num_classes,
            "split_counts": self.split_counts, "rejected": len(self.rejected),
            "converted": len(self.converted), "duration_s": round(self.duration_s, 2),
            "imbalance_ratio": imbalance_ratios(self),
        }

    def shard_paths(self, split: str) -> list[str]:
        """Absolute shard paths of `split`; `ValueError` if it is empty."""
        if self.split_counts.get(split, 0) == 0:
            raise ValueError(
                f"Dataset {self.path!r} has no {split!r} split; "
                f"it has {self.splits}."
            )
        return [os.path.join(self.path, name) for name in self.shards[split]]

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("path")
        return data


def read_dataset_info(path: str | os.PathLike) -> DatasetInfo:
    """Reads `dataset.json` of a dataset folder.

    Args:
        path: The dataset folder.

    Returns:
        The `DatasetInfo`, with `path` set to the folder.

    Raises:
        IncompleteDatasetError: No folder, or no `dataset.json` in it (an
            interrupted creation leaves none).
        ValueError: A `dataset.json` from an unknown format version.
    """
    path = os.fspath(path)
    info_path = os.path.join(path, INFO_FILE)
    if not os.path.isdir(path):
        raise IncompleteDatasetError(f"Dataset folder {path!r} does not exist.")
    if not os.path.isfile(info_path):
        raise IncompleteDatasetError(
            f"{path!r} is not a complete vispipe dataset: {INFO_FILE} is "
            "missing (was its creation interrupted?)."
        )
    with open(info_path, encoding="utf-8") as f:
        data = json.load(f)
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{info_path}: expected format version {FORMAT_VERSION}, "
            f"got {version!r}."
        )
    return DatasetInfo(path=path, **data)
