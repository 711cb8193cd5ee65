"""DIGITS' "New Image Classification Dataset": image files -> TFRecord shards.

Worker processes decode, check, resize and encode the images and serialize
each `tf.train.Example` themselves (with Pillow and numpy only); the parent
process only writes the records, so TensorFlow is never used in a worker.
Everything is written into a temporary folder beside `output`
(`vispipe.fileio.atomic_path`) that is renamed into place once complete,
with `dataset.json` written last.

Example:

```python
from vispipe.configs import DatasetConfig, ImageOptions
from vispipe.data.create import create_dataset

info = create_dataset(DatasetConfig(
    source="photos", output="datasets/photos", val_percent=20,
    image=ImageOptions(height=64, width=64, channels=3, resize_mode="crop"),
))
print(info.split_counts, len(info.rejected))
```
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import functools
import gc
import hashlib
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import types
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from vispipe.configs import ENCODINGS, RESIZE_MODES, DatasetConfig, ImageOptions
from vispipe.data.format import (
    FEATURE_CHANNELS,
    FEATURE_FILENAME,
    FEATURE_FORMAT,
    FEATURE_HEIGHT,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    FEATURE_WIDTH,
    INFO_FILE,
    LABELS_FILE,
    MEAN_FILE,
    SPLITS,
    DatasetInfo,
    shard_name,
)
from vispipe.data.images import ImageError, encode_image, load_image
from vispipe.data.sources import Source, SourceImage, load_source
from vispipe.fileio import atomic_path, write_json_atomic
from vispipe.interrupts import sigterm_as_interrupt

__all__ = [
    "MEAN_IMAGE_FILE",
    "REJECTED_FILE",
    "DatasetExistsError",
    "validate_dataset_config",
    "serialize_example",
    "create_dataset",
]

MEAN_IMAGE_FILE = "mean.png"
REJECTED_FILE = "rejected.csv"
_FORMATS = {"png": b"png", "jpeg": b"jpeg", "raw": b"raw"}


class DatasetExistsError(FileExistsError, ValueError):
    """The output folder exists and `overwrite` is off."""


def validate_dataset_config(config: DatasetConfig) -> None:
    """Checks the options that do not depend on the files.

    Raises:
        ValueError: Naming the field, what was expected and what was got.
    """
    image = config.image
    if not config.output:
        raise ValueError("output: expected the folder to write the dataset to, got ''.")
    for name in ("height", "width"):
        value = getattr(image, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"image.{name}: expected a positive integer, got {value!r}.")
    if image.channels not in (1, 3):
        raise ValueError(f"image.channels: expected 1 or 3, got {image.channels!r}.")
    if image.resize_mode not in RESIZE_MODES:
        raise ValueError(
            f"image.resize_mode: expected one of {RESIZE_MODES}, got {image.resize_mode!r}."
        )
    if image.encoding not in ENCODINGS:
        raise ValueError(
            f"image.encoding: expected one of {ENCODINGS}, got {image.encoding!r}."
        )
    if not 1 <= image.jpeg_quality <= 100:
        raise ValueError(
            f"image.jpeg_quality: expected 1-100, got {image.jpeg_quality!r}."
        )
    for name in ("min_per_class", "max_per_class", "workers"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: expected >= 0, got {getattr(config, name)!r}.")
    if config.shard_size <= 0:
        raise ValueError(f"shard_size: expected a positive integer, got {config.shard_size!r}.")


# --- tf.train.Example, serialized by hand so that workers need no TensorFlow --

def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:  # the common case: lengths of small fields, labels
        return _SMALL_VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]


@functools.lru_cache(maxsize=64)
def _key_field(key: str) -> bytes:
    return _field(1, key.encode())


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def serialize_example(features: dict[str, bytes | int]) -> bytes:
    """Serializes a `tf.train.Example` of single bytes or int64 features.

    The bytes parse with `tf.train.Example.FromString` (map entries are
    written in sorted key order); no TensorFlow import is needed.

    Example:

    >>> record = serialize_example({"image/class/label": 3, "image/format": b"png"})
    """
    entries = b""
    for key in sorted(features):
        value = features[key]
        if isinstance(value, bytes):
            feature = _field(1, _field(1, value))  # bytes_list { value }
        else:
            feature = _field(3, _field(1, _varint(int(value))))  # int64_list, packed
        entries += _field(1, _key_field(key) + _field(2, feature))
    return _field(1, entries)


# --- worker side ---------------------------------------------------------------

@dataclasses.dataclass
class _ChunkResult:
    """What a worker returns for a chunk of images."""

    records: list[tuple[int, bytes]]
    rejected: list[tuple[str, int, str]]  # path, label, reason
    converted: list[tuple[str, str]]
    pixel_sum: np.ndarray  # float64 (H, W, C), summed over the kept images
    channel_sq_sum: np.ndarray  # float64 (C,)


def _process_chunk(task: tuple[list[SourceImage], ImageOptions]) -> _ChunkResult:
    images, options = task
    shape = (options.height, options.width, options.channels)
    result = _ChunkResult([], [], [], np.zeros(shape), np.zeros(options.channels))
    fmt = _FORMATS[options.encoding]
    for image in images:
        try:
            array, note = load_image(image.path, options)
        except ImageError as error:
            result.rejected.append((image.path, image.label, error.reason))
            continue
        if note:
            result.converted.append((image.path, note))
        result.pixel_sum += array
        values = array.reshape(-1, options.channels).astype(np.float64)
        result.channel_sq_sum += np.einsum("ij,ij->j", values, values)
        record = serialize_example({
            FEATURE_IMAGE: encode_image(array, options.encoding, options.jpeg_quality),
            FEATURE_FORMAT: fmt,
            FEATURE_HEIGHT: options.height,
            FEATURE_WIDTH: options.width,
            FEATURE_CHANNELS: options.channels,
            FEATURE_LABEL: image.label,
            FEATURE_FILENAME: image.name.encode("utf-8"),
        })
        result.records.append((image.label, record))
    return result


def _init_worker() -> None:
    """Ignores Ctrl-C and keeps the garbage collector off long-lived objects."""
    # Ctrl-C reaches the whole process group; the parent alone handles it
    # and terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Each worker imports this module and its dependencies itself; freezing
    # them keeps full collections from walking those objects for every chunk.
    gc.freeze()


# Held around swapping `sys.modules["__main__"]` and creating the pool, so
# that concurrent creations never restore each other's module.
_MAIN_SWAP_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Starts workers without importing the caller's `__main__` script.

    Workers (spawned, or forked by the fork server) import the parent's main
    script: `python script.py`, and `python -m pkg.mod` too, re-imported by
    spawn's preparation as `__mp_main__` unless the name ends in `__main__`.
    A script that imports TensorFlow and Keras so made each creation pay for
    that import again, and every garbage collection in the workers walk
    TensorFlow's objects: creation from photos ran 2x slower under such a script
    (bench/README.md). The workers need only this module. The lock is held
    for the whole scope, so create the pool inside it; workers that the pool
    restarts later are started outside it and do import the script.
    """
    with _MAIN_SWAP_LOCK:
        missing = object()
        main = sys.modules.get("__main__", missing)
        blank = types.ModuleType("__main__")
        sys.modules["__main__"] = blank
        try:
            yield
        finally:
            if sys.modules.get("__main__") is blank:
                if main is missing:
                    del sys.modules["__main__"]
                else:
                    sys.modules["__main__"] = main


@contextlib.contextmanager
def _chunk_results(
    tasks: list[tuple[list[SourceImage], ImageOptions]], workers: int
) -> Iterator[Iterator[_ChunkResult]]:
    """Yields the chunks' results in order, computed in `workers` processes.

    A context manager, so that the pool stops as soon as the caller fails.
    """
    if workers == 1 or len(tasks) <= 1:
        yield map(_process_chunk, tasks)
        return
    # Not fork: a process that already loaded TensorFlow (a notebook, the
    # trainer, a test session) has threads and locks a forked child inherits
    # mid-use; forked workers then crashed in garbage collection. The fork
    # server is a fresh interpreter that imports only this module's
    # Pillow/numpy code.
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    with _main_script_hidden():
        pool = context.Pool(min(workers, len(tasks)), initializer=_init_worker)
    with pool:
        yield pool.imap(_process_chunk, tasks)


# --- parent side ---------------------------------------------------------------

class _ShardWriter:
    """Writes one split's records into shards of `shard_size` records."""

    def __init__(self, folder: str, split: str, shard_size: int):
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.paths: list[str] = []
        self.count = 0
        self._writer = None

    def write(self, record: bytes) -> None:
        if self.count % self.shard_size == 0:
            self._close_shard()
            import tensorflow as tf

            # The shard count is known only at the end; rename then.
            path = os.path.join(self.folder, f"{self.split}-{len(self.paths):05d}.partial")
            self.paths.append(path)
            self._writer = tf.io.TFRecordWriter(path)
        self._writer.write(record)
        self.count += 1

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[str]:
        """Closes the last shard and gives every shard its final name."""
        self._close_shard()
        names = []
        for index, path in enumerate(self.paths):
            names.append(shard_name(self.split, index, len(self.paths)))
            os.replace(path, os.path.join(self.folder, names[-1]))
        return names


def _chunks(images: list[SourceImage], size: int) -> Iterable[list[SourceImage]]:
    return (images[i:i + size] for i in range(0, len(images), size))


def _check_min_per_class(
    classes: list[str],
    counts: dict[str, dict[str, int]],
    minimum: int,
    rejected_by_class: dict[str, int] | None = None,
) -> None:
    for name in classes:
        total = sum(counts[split][name] for split in SPLITS)
        if total < minimum:
            detail = ", ".join(f"{split} {counts[split][name]}" for split in SPLITS)
            if rejected_by_class is not None:
                detail += f"; {rejected_by_class.get(name, 0)} rejected"
            raise ValueError(
                f"Class {name!r} has {total} usable image(s) ({detail}), fewer "
                f"than min_per_class={minimum}."
            )


def _write_side_files(
    folder: str,
    classes: list[str],
    mean: np.ndarray,
    rejected: list[dict[str, str]],
) -> None:
    with open(os.path.join(folder, LABELS_FILE), "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in classes))
    np.save(os.path.join(folder, MEAN_FILE), mean)
    pixels = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(
        os.path.join(folder, MEAN_IMAGE_FILE)
    )
    with open(os.path.join(folder, REJECTED_FILE), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([item["path"], item["reason"]] for item in rejected)


def _content_hash(folder: str, shards: dict[str, list[str]]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        for name in shards[split]:
            with open(os.path.join(folder, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _write_dataset(
    config: DatasetConfig, source: Source, folder: str, progress: bool
) -> dict[str, Any]:
    """Writes shards and side files into `folder`; returns DatasetInfo fields."""
    from tqdm import tqdm

    options = config.image
    classes = source.classes
    inputs = dict(source.splits)
    # Training records are shuffled once so that every shard mixes classes.
    inputs["train"] = list(inputs["train"])
    random.Random(config.seed).shuffle(inputs["train"])
    counts = {
        split: {name: 0 for name in classes} for split in SPLITS
    }
    for split in SPLITS:
        for image in inputs[split]:
            counts[split][classes[image.label]] += 1
    _check_min_per_class(classes, counts, config.min_per_class)

    workers = config.workers or os.cpu_count() or 1
    total = sum(len(images) for images in inputs.values())
    chunk_size = max(8, min(512, math.ceil(total / (workers * 8))))
    tasks, task_splits = [], []
    for split in SPLITS:
        for chunk in _chunks(inputs[split], chunk_size):
            tasks.append((chunk, options))
            task_splits.append(split)

    shape = (options.height, options.width, options.channels)
    pixel_sum, sq_sum = np.zeros(shape), np.zeros(options.channels)
    writers = {split: _ShardWriter(folder, split, config.shard_size) for split in SPLITS}
    counts = {split: {name: 0 for name in classes} for split in SPLITS}
    rejected: list[dict[str, str]] = []
    converted: list[dict[str, str]] = []
    rejected_by_class: dict[str, int] = {}
    with (
        _chunk_results(tasks, workers) as results,
        tqdm(total=total, unit="img", desc="Creating dataset", disable=not progress) as bar,
    ):
        for (chunk, _), split, result in zip(tasks, task_splits, results):
            for label, record in result.records:
                writers[split].write(record)
                counts[split][classes[label]] += 1
            for path, label, reason in result.rejected:
                rejected.append({"path": path, "reason": reason})
                rejected_by_class[classes[label]] = rejected_by_class.get(classes[label], 0) + 1
            converted += [{"path": p, "from": note} for p, note in result.converted]
            if split == "train":
                pixel_sum += result.pixel_sum
                sq_sum += result.channel_sq_sum
            bar.update(len(chunk))
    shards = {split: writers[split].finish() for split in SPLITS}
    _check_min_per_class(classes, counts, config.min_per_class, rejected_by_class)
    train_count = sum(counts["train"].values())
    if train_count == 0:
        raise ValueError(
            "No usable training images: the train split has none left "
            f"({len(rejected)} file(s) rejected in all)."
        )

    mean = (pixel_sum / train_count).astype(np.float32)
    pixels_per_channel = train_count * options.height * options.width
    mean_pixel = pixel_sum.reshape(-1, options.channels).sum(axis=0) / pixels_per_channel
    std_pixel = np.sqrt(np.maximum(sq_sum / pixels_per_channel - mean_pixel**2, 0.0))
    _write_side_files(folder, classes, mean, rejected)
    return {
        "classes": classes,
        "height": options.height,
        "width": options.width,
        "channels": options.channels,
        "encoding": options.encoding,
        "split_counts": {split: sum(counts[split].values()) for split in SPLITS},
        "class_counts": counts,
        "shards": shards,
        "mean_pixel": [float(v) for v in mean_pixel],
        "std_pixel": [float(v) for v in std_pixel],
        "rejected": rejected,
        "converted": converted,
        "content_hash": _content_hash(folder, shards),
    }


def create_dataset(config: DatasetConfig, *, progress: bool = True) -> DatasetInfo:
    """Creates a TFRecord image-classification dataset from image files.

    Every image is decoded, converted to `config.image.channels`, resized
    with DIGITS' semantics and stored with the chosen encoding. Files that
    cannot be used are skipped and listed (with the reason) in
    `info.rejected` and `rejected.csv`; files kept after a conversion (CMYK,
    16-bit, palette, alpha...) are listed in `info.converted`.

    The folder holds the shards of each split, `labels.txt`, `mean.npy`
    (float32 mean training image), `mean.png`, `rejected.csv` and, written
    last, `dataset.json`. It is built in a temporary folder beside `output`
    (`.<name>.partial-<random>`) and renamed into place when complete; on any error, Ctrl-C or SIGTERM the
    partial folder is removed (and an existing dataset is left untouched).

    Args:
        config: The dataset job. Paths inside `config.archive` are resolved
            first.
        progress: Show a progress bar over the images.

    Returns:
        The `DatasetInfo` also stored in `dataset.json`.

    Raises:
        DatasetExistsError: `output` exists and `overwrite` is off.
        FileNotFoundError: A source folder, list or listed file is missing.
        ValueError: Invalid options or sources, too few classes, or a class
            with fewer than `min_per_class` usable images.

    Example:

    >>> info = create_dataset(DatasetConfig(builtin="digits", output="ds",
    ...                       image=ImageOptions(height=8, width=8)))
    >>> info.num_classes
    10
    """
    start = time.perf_counter()
    validate_dataset_config(config)
    output = os.path.abspath(config.output)
    if os.path.exists(output) and not config.overwrite:
        raise DatasetExistsError(
            f"output {output!r} already exists; choose another folder or set overwrite."
        )
    from vispipe.data.archive import resolve_archive

    # SIGTERM (kubectl delete, the UI's abort) cleans up like Ctrl-C.
    with sigterm_as_interrupt():
        source = load_source(resolve_archive(config))
        try:
            with atomic_path(output, folder=True) as partial:
                fields = _write_dataset(config, source, partial, progress)
                info = DatasetInfo(
                    path=output,
                    source=source.description,
                    options=dataclasses.asdict(config),
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    duration_s=round(time.perf_counter() - start, 3),
                    **fields,
                )
                write_json_atomic(os.path.join(partial, INFO_FILE), info.to_json())
        finally:
            source.cleanup()
    return info
