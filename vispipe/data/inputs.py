"""Fast `tf.data` input pipelines over a vispipe dataset folder.

The pipeline reads the split's shards with a parallel interleave, takes the
first `limit` records, keeps this rank's share, parses and decodes in
parallel, caches the decoded uint8 images in memory when they fit, shuffles,
batches, and only then casts and augments whole batches (one vectorised op
per batch instead of one per image), prefetching ahead of the model.

Order is deterministic: evaluation always sees the same order, and training
order depends only on `seed` (reshuffled every epoch).

Example:

```python
ds = make_dataset("datasets/mnist", "train", 64, training=True, seed=1)
model.fit(ds, epochs=10)
images, labels = load_arrays("datasets/mnist", "val")
```
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from vispipe.configs import CACHE_MODES, AugmentConfig
from vispipe.data.augment import make_augmenter
from vispipe.data.format import (
    FEATURE_FILENAME,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    DatasetInfo,
    read_dataset_info,
)

__all__ = [
    "CACHE_RAM_FRACTION",
    "CACHE_MAX_BYTES",
    "make_dataset",
    "decoded_records",
    "steps_per_epoch",
    "load_arrays",
    "records_per_rank",
    "cache_budget_bytes",
]

# cache="auto" keeps decoded images in memory when they take at most this
# share of the available RAM, and never more than CACHE_MAX_BYTES.
CACHE_RAM_FRACTION = 0.25
CACHE_MAX_BYTES = 16 * 2**30
_SHUFFLE_BUFFER_UNCACHED = 10_000
_MAX_INTERLEAVE = 16  # Fixed, not the CPU count, so the order is the same everywhere.
_PARSE_BATCH = 256  # Records parsed together by one vectorised parse_example.


def _resolve(dataset: str | os.PathLike | DatasetInfo) -> DatasetInfo:
    if isinstance(dataset, DatasetInfo):
        return dataset
    return read_dataset_info(dataset)


def records_per_rank(
    info: DatasetInfo, split: str, num_shards: int = 1, limit: int = 0
) -> int:
    """Records one rank reads from `split`.

    Args:
        info: The dataset.
        split: `"train"`, `"val"` or `"test"`.
        num_shards: Number of ranks the split is divided between.
        limit: Use only the first `limit` records of the split (0: all).

    Returns:
        `min(limit, count) // num_shards` (with one rank, all of them). With
        several ranks the remainder is dropped so that every rank runs the
        same number of steps.

    Raises:
        ValueError: An unknown or empty split, or invalid arguments.
    """
    count = info.split_counts.get(split, 0)
    if count == 0:
        raise ValueError(
            f"Split {split!r} of dataset {info.path!r} is empty or unknown; "
            f"the dataset has {info.splits}."
        )
    if num_shards < 1:
        raise ValueError(f"num_shards: expected an integer >= 1, got {num_shards!r}.")
    if limit < 0:
        raise ValueError(f"limit: expected an integer >= 0 (0: all), got {limit!r}.")
    if limit:
        count = min(count, limit)
    per_rank = count // num_shards
    if per_rank == 0:
        raise ValueError(
            f"Split {split!r} of dataset {info.path!r}: {count} record(s) cannot "
            f"be divided between {num_shards} ranks."
        )
    return per_rank


def steps_per_epoch(
    info: DatasetInfo,
    split: str,
    batch_size: int,
    drop_remainder: bool,
    num_shards: int = 1,
    limit: int = 0,
) -> int:
    """Batches `make_dataset` yields per pass with the same arguments.

    Args:
        info: The dataset.
        split: The split.
        batch_size: Batch size per rank.
        drop_remainder: Whether the last partial batch is dropped.
        num_shards: Number of ranks.
        limit: First-N-records limit (0: all).

    Returns:
        The number of batches, at least 1.

    Raises:
        ValueError: An empty split, or fewer records than one batch with
            `drop_remainder`.

    Example:

    ```python
    steps = steps_per_epoch(read_dataset_info("ds"), "train", 64, True)
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}.")
    count = records_per_rank(info, split, num_shards, limit)
    if drop_remainder:
        if count < batch_size:
            raise ValueError(
                f"Split {split!r} of dataset {info.path!r} has {count} record(s) "
                f"per rank, fewer than one batch of {batch_size} with "
                "drop_remainder."
            )
        return count // batch_size
    return math.ceil(count / batch_size)


def cache_budget_bytes() -> int:
    """Bytes `cache="auto"` may use: a share of the available RAM, capped."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # psutil is optional: fall back to POSIX counters.
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(min(available * CACHE_RAM_FRACTION, CACHE_MAX_BYTES))


def _decoder(info: DatasetInfo):
    """Returns `decode(bytes) -> uint8 [H, W, C]` for the dataset's encoding."""
    shape = info.image_shape
    if info.encoding == "png":
        decode = lambda data: tf.io.decode_png(data, channels=info.channels)
    elif info.encoding == "jpeg":
        decode = lambda data: tf.io.decode_jpeg(data, channels=info.channels)
    elif info.encoding == "raw":
        decode = lambda data: tf.reshape(tf.io.decode_raw(data, tf.uint8), shape)
    else:
        raise ValueError(
            f"Dataset {info.path!r}: unknown image encoding {info.encoding!r} in "
            "dataset.json; expected 'png', 'jpeg' or 'raw'."
        )

    def decode_checked(data: tf.Tensor) -> tf.Tensor:
        image = decode(data)
        image.set_shape([None, None, info.channels])
        # A wrongly sized image fails here, not deep inside the model.
        return tf.ensure_shape(image, shape)

    return decode_checked


def _decoded_records(
    info: DatasetInfo,
    split: str,
    *,
    num_shards: int,
    shard_index: int,
    limit: int,
    with_filenames: bool,
) -> tf.data.Dataset:
    """Deterministic stream of `(image uint8 [H,W,C], label int32[, filename])`."""
    per_rank = records_per_rank(info, split, num_shards, limit)
    if not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index: expected 0 <= shard_index < num_shards={num_shards}, "
            f"got {shard_index!r}."
        )
    files = info.shard_paths(split)
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), _MAX_INTERLEAVE),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,  # Ranks must agree on the order to partition it.
    )
    ds = ds.take(per_rank * num_shards)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)

    spec = {
        FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
        FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
    }
    if with_filenames:
        spec[FEATURE_FILENAME] = tf.io.FixedLenFeature([], tf.string, default_value="")

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return tf.io.parse_example(serialized, spec)

    ds = ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    decode = _decoder(info)
    if info.encoding == "raw":
        # Raw bytes decode as one vectorised op per parsed batch.
        def decode_batch(features):
            images = tf.io.decode_raw(features[FEATURE_IMAGE], tf.uint8)
            features[FEATURE_IMAGE] = tf.reshape(images, (-1, *info.image_shape))
            return features

        ds = ds.map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    else:
        ds = ds.unbatch()

    def to_tuple(features):
        image = features[FEATURE_IMAGE]
        if info.encoding != "raw":
            image = decode(image)
        label = tf.cast(features[FEATURE_LABEL], tf.int32)
        if with_filenames:
            return image, label, features[FEATURE_FILENAME]
        return image, label

    ds = ds.map(to_tuple, num_parallel_calls=tf.data.AUTOTUNE)
    # Known length: Keras sizes its progress bar and epoch without probing.
    return ds.apply(tf.data.experimental.assert_cardinality(per_rank))


def _use_cache(info: DatasetInfo, count: int, training: bool, cache: str) -> bool:
    if cache not in CACHE_MODES:
        raise ValueError(f"cache: expected one of {CACHE_MODES}, got {cache!r}.")
    decoded_bytes = count * math.prod(info.image_shape) * (2 if training else 1)
    return cache == "memory" or (cache == "auto" and decoded_bytes <= cache_budget_bytes())


def decoded_records(
    dataset: str | os.PathLike | DatasetInfo,
    split: str,
    *,
    training: bool = False,
    cache: str = "auto",
    num_shards: int = 1,
    shard_index: int = 0,
    limit: int = 0,
    with_filenames: bool = False,
) -> tf.data.Dataset:
    """One split's decoded uint8 records, cached in memory when they fit.

    Build it once and hand it to `make_dataset(records=...)` every epoch:
    the cache is filled by the first pass and shared by every pipeline made
    from it. Arguments are as for `make_dataset`.

    Returns:
        A `tf.data.Dataset` of unbatched `(image uint8 [H, W, C], label)`
        (+ filename).
    """
    info = _resolve(dataset)
    count = records_per_rank(info, split, num_shards, limit)
    ds = _decoded_records(
        info, split, num_shards=num_shards, shard_index=shard_index,
        limit=limit, with_filenames=with_filenames,
    )
    return ds.cache() if _use_cache(info, count, training, cache) else ds


def make_dataset(
    dataset: str | os.PathLike | DatasetInfo,
    split: str,
    batch_size: int,
    *,
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    cache: str = "auto",
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
    repeat: bool = False,
    with_filenames: bool = False,
    limit: int = 0,
    records: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """A batched input pipeline over one split of a dataset folder.

    Args:
        dataset: The dataset folder, or its `DatasetInfo`.
        split: `"train"`, `"val"` or `"test"`.
        batch_size: Images per batch (per rank).
        training: Shuffle (reshuffled every pass) and augment.
        augment: Augmentation, applied only when `training`.
        seed: Seed of the shuffle and the augmentation; the same seed gives
            the same batches.
        cache: `"memory"` keeps the decoded uint8 images in memory after the
            first pass; `"none"` decodes every pass; `"auto"` caches when the
            decoded split (twice that when training, for the shuffle buffer)
            fits in `cache_budget_bytes()`.
        num_shards: Distributed training: number of ranks. Each rank sees a
            disjoint `1/num_shards` of the records (`Dataset.shard` on the
            records before caching; the remainder is dropped so every rank
            runs the same number of steps).
        shard_index: This rank, in `[0, num_shards)`.
        drop_remainder: Drop the last partial batch.
        repeat: Repeat forever (pair with `steps_per_epoch`).
        with_filenames: Also yield the source file names.
        limit: Use only the first `limit` records of the split (0: all).
        records: The split's decoded records from `decoded_records`, made
            with the same `training`, `cache`, sharding, `limit` and
            `with_filenames`; pass the same object every epoch so that its
            in-memory cache fills once while each epoch gets its own `seed`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: float32 `[B, H, W, C]` on
        the 0-255 scale and int32 `[B]`; with `with_filenames`, a third
        element, tf.string `[B]`.

    Raises:
        ValueError: An empty or unknown split (naming split and dataset), or
            an invalid argument or augmentation setting.

    Example:

    ```python
    train = make_dataset("datasets/cifar10", "train", 128, training=True,
                         augment=AugmentConfig(flip_horizontal=True,
                                               crop_padding=4), seed=7)
    val = make_dataset("datasets/cifar10", "val", 256)
    ```
    """
    info = _resolve(dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}.")
    count = records_per_rank(info, split, num_shards, limit)
    if drop_remainder:
        steps_per_epoch(info, split, batch_size, True, num_shards, limit)
    augment_fn = None
    if training and augment is not None and augment.enabled:
        augment_fn = make_augmenter(augment, info.image_shape, seed)
    if records is None:
        records = decoded_records(
            info, split, training=training, cache=cache, num_shards=num_shards,
            shard_index=shard_index, limit=limit, with_filenames=with_filenames,
        )
    cached = _use_cache(info, count, training, cache)
    ds = records
    if training:
        buffer = count if cached else min(count, _SHUFFLE_BUFFER_UNCACHED)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(
        batch_size, drop_remainder=drop_remainder,
        num_parallel_calls=tf.data.AUTOTUNE,
    )

    if augment_fn is None:
        def to_float(images, *rest):
            return (tf.cast(images, tf.float32), *rest)

        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # One random key per batch, a new stream each pass: augmentation
        # differs between epochs yet is fixed by `seed`.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def to_float_augmented(batch, key):
            images, *rest = batch
            return (augment_fn(tf.cast(images, tf.float32), key), *rest)

        ds = tf.data.Dataset.zip((ds, keys)).map(
            to_float_augmented, num_parallel_calls=tf.data.AUTOTUNE
        )
    ds = ds.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options)


def load_arrays(
    dataset: str | os.PathLike | DatasetInfo, split: str, limit: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a whole split into memory, in the evaluation order.

    Args:
        dataset: The dataset folder, or its `DatasetInfo`.
        split: The split.
        limit: Only the first `limit` records (0: all).

    Returns:
        `(images, labels)`: uint8 `[N, H, W, C]` and int32 `[N]`, in the order
        `make_dataset(..., training=False)` yields them.

    Raises:
        ValueError: An empty or unknown split.

    Example:

    ```python
    x, y = load_arrays("datasets/mnist", "test")
    ```
    """
    info = _resolve(dataset)
    count = records_per_rank(info, split, 1, limit)
    images = np.empty((count, *info.image_shape), np.uint8)
    labels = np.empty((count,), np.int32)
    ds = _decoded_records(
        info, split, num_shards=1, shard_index=0, limit=limit, with_filenames=False
    ).batch(1024).prefetch(tf.data.AUTOTUNE)
    start = 0
    with tqdm(total=count, desc=f"Decoding {split}", unit="img", leave=False) as bar:
        for batch_images, batch_labels in ds.as_numpy_iterator():
            end = start + len(batch_labels)
            images[start:end] = batch_images
            labels[start:end] = batch_labels
            start = end
            bar.update(len(batch_labels))
    return images, labels
