"""Datasets: creation from images, the on-disk format, and tf.data input.

Public API (imported on first use, so `vispipe.data.format` stays light):

- `create_dataset(config)`: folders, lists or archives of images -> TFRecord dataset.
- `read_dataset_info(path)`: a dataset folder's `dataset.json` as `DatasetInfo`.
- `make_dataset(dataset, split, batch_size, ...)`: the tf.data input pipeline.
- `load_arrays(dataset, split)`: a whole split decoded into numpy arrays.
- `make_augmenter(config, image_shape, seed)`: batch augmentation.
- `load_image(path, options)`: one image loaded the way the dataset stores it.

Example:

```python
from vispipe.configs import DatasetConfig
from vispipe.data import create_dataset, make_dataset

info = create_dataset(DatasetConfig(source="photos", output="datasets/photos"))
batches = make_dataset(info, "train", batch_size=64, training=True)
```
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DatasetInfo",
    "IncompleteDatasetError",
    "ImageError",
    "create_dataset",
    "read_dataset_info",
    "make_dataset",
    "steps_per_epoch",
    "load_arrays",
    "make_augmenter",
    "load_image",
    "resolve_archive",
]

_HOMES = {
    "DatasetInfo": "vispipe.data.format",
    "IncompleteDatasetError": "vispipe.data.format",
    "read_dataset_info": "vispipe.data.format",
    "ImageError": "vispipe.data.images",
    "load_image": "vispipe.data.images",
    "create_dataset": "vispipe.data.create",
    "make_dataset": "vispipe.data.inputs",
    "steps_per_epoch": "vispipe.data.inputs",
    "load_arrays": "vispipe.data.inputs",
    "make_augmenter": "vispipe.data.augment",
    "resolve_archive": "vispipe.data.archive",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vispipe.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
