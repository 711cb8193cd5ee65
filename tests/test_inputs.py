"""The input pipeline over a dataset folder: what training and evaluation get."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from vispipe.configs import AugmentConfig
from vispipe.data.format import (
    FEATURE_CHANNELS,
    FEATURE_FILENAME,
    FEATURE_FORMAT,
    FEATURE_HEIGHT,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    FEATURE_WIDTH,
    INFO_FILE,
    DatasetInfo,
    read_dataset_info,
    shard_name,
)
from vispipe.data.inputs import (
    load_arrays,
    make_dataset,
    records_per_rank,
    steps_per_epoch,
)

SHAPE = (6, 5, 3)
NUM_CLASSES = 3


def _image(index: int, shape=SHAPE) -> np.ndarray:
    """A flat image whose value identifies the record (robust to JPEG)."""
    return np.full(shape, (index * 7) % 250, np.uint8)


def _encode(image: np.ndarray, encoding: str) -> bytes:
    if encoding == "png":
        return tf.io.encode_png(image).numpy()
    if encoding == "jpeg":
        return tf.io.encode_jpeg(image, quality=100).numpy()
    return image.tobytes()


def _feature(value) -> tf.train.Feature:
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def write_dataset(
    path, encoding: str = "png", counts=None, shape=SHAPE, records_per_shard: int = 7
) -> DatasetInfo:
    """Writes a complete dataset folder; record `i` of a split has label `i % 3`."""
    counts = counts if counts is not None else {"train": 20, "val": 9}
    os.makedirs(path, exist_ok=True)
    shards, index = {}, 0
    for split, count in counts.items():
        num_files = max(1, -(-count // records_per_shard))
        shards[split] = [shard_name(split, i, num_files) for i in range(num_files)]
        for file_index, name in enumerate(shards[split]):
            with tf.io.TFRecordWriter(os.path.join(path, name)) as writer:
                for i in range(file_index, count, num_files):
                    image = _image(index + i, shape)
                    example = tf.train.Example(features=tf.train.Features(feature={
                        FEATURE_IMAGE: _feature(_encode(image, encoding)),
                        FEATURE_FORMAT: _feature(encoding.encode()),
                        FEATURE_HEIGHT: _feature(shape[0]),
                        FEATURE_WIDTH: _feature(shape[1]),
                        FEATURE_CHANNELS: _feature(shape[2]),
                        FEATURE_LABEL: _feature(i % NUM_CLASSES),
                        FEATURE_FILENAME: _feature(f"{split}/{i}.png".encode()),
                    }))
                    writer.write(example.SerializeToString())
        index += 1000
    info = DatasetInfo(
        path=str(path), classes=[f"c{i}" for i in range(NUM_CLASSES)],
        height=shape[0], width=shape[1], channels=shape[2], encoding=encoding,
        split_counts=dict(counts), class_counts={}, shards=shards,
        mean_pixel=[0.0] * shape[2], std_pixel=[1.0] * shape[2],
    )
    with open(os.path.join(path, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info.to_json(), f)
    return read_dataset_info(path)


def _collect(ds):
    parts = list(zip(*[tuple(t.numpy() for t in batch) for batch in ds]))
    return [np.concatenate(p) for p in parts]


def _ids(images: np.ndarray) -> list[int]:
    """Record value of each image (see `_image`)."""
    return [int(round(float(v))) for v in images.reshape(len(images), -1).mean(axis=1)]


@pytest.fixture
def png_dataset(tmp_path):
    return write_dataset(tmp_path / "png")


@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw"])
def test_round_trip_shapes_dtypes_and_labels(tmp_path, encoding):
    info = write_dataset(tmp_path / encoding, encoding)
    ds = make_dataset(info.path, "train", 8)
    images, labels = _collect(ds)
    assert images.dtype == np.float32 and images.shape == (20, *SHAPE)
    assert labels.dtype == np.int32
    ds_images, ds_labels = next(iter(ds))
    assert ds_images.shape == (8, *SHAPE) and ds_labels.shape == (8,)
    # Every record comes back once, with its own label and pixels (JPEG is
    # lossy: within 2 levels).
    expected = np.stack([_image(i) for i in range(20)]).astype(np.float32)
    order = np.argsort(images.mean(axis=(1, 2, 3)))
    tolerance = 2 if encoding == "jpeg" else 0
    np.testing.assert_allclose(images[order], expected, atol=tolerance)
    np.testing.assert_array_equal(labels[order], np.arange(20) % NUM_CLASSES)


def test_eval_order_is_deterministic_and_matches_load_arrays(png_dataset):
    first = _collect(make_dataset(png_dataset, "train", 6, with_filenames=True))
    second = _collect(make_dataset(png_dataset, "train", 6, with_filenames=True))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    images, labels = load_arrays(png_dataset, "train")
    assert images.dtype == np.uint8 and images.shape == (20, *SHAPE)
    np.testing.assert_array_equal(images.astype(np.float32), first[0])
    np.testing.assert_array_equal(labels, first[1])


def test_training_reshuffles_every_epoch_reproducibly(png_dataset):
    ds = make_dataset(png_dataset, "train", 4, training=True, seed=3)
    epoch1 = _ids(_collect(ds)[0])
    epoch2 = _ids(_collect(ds)[0])
    assert sorted(epoch1) == sorted(epoch2)
    assert epoch1 != epoch2
    again = make_dataset(png_dataset, "train", 4, training=True, seed=3)
    assert _ids(_collect(again)[0]) == epoch1
    assert _ids(_collect(again)[0]) == epoch2
    other = make_dataset(png_dataset, "train", 4, training=True, seed=4)
    assert _ids(_collect(other)[0]) != epoch1


def test_two_shards_partition_the_records(png_dataset):
    parts = [
        _ids(_collect(make_dataset(png_dataset, "train", 4, num_shards=2, shard_index=i))[0])
        for i in range(2)
    ]
    assert len(parts[0]) == len(parts[1]) == 10
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(_ids(_collect(make_dataset(png_dataset, "train", 4))[0]))
    assert steps_per_epoch(png_dataset, "train", 4, False, num_shards=2) == 3
    with pytest.raises(ValueError, match="shard_index"):
        make_dataset(png_dataset, "train", 4, num_shards=2, shard_index=2)


def test_odd_count_drops_remainder_so_ranks_match(tmp_path):
    info = write_dataset(tmp_path / "odd", counts={"train": 9})
    sizes = [
        len(_collect(make_dataset(info, "train", 2, num_shards=2, shard_index=i))[1])
        for i in range(2)
    ]
    assert sizes == [4, 4]
    assert records_per_rank(info, "train", num_shards=2) == 4


def test_limit_takes_the_first_records(png_dataset):
    full = _collect(make_dataset(png_dataset, "train", 4))
    limited = _collect(make_dataset(png_dataset, "train", 4, limit=5))
    np.testing.assert_array_equal(limited[0], full[0][:5])
    assert steps_per_epoch(png_dataset, "train", 4, False, limit=5) == 2
    images, _ = load_arrays(png_dataset, "train", limit=5)
    assert len(images) == 5


@pytest.mark.parametrize("cache", ["auto", "memory", "none"])
def test_cache_modes_yield_the_same_data(png_dataset, cache):
    ds = make_dataset(png_dataset, "val", 4, cache=cache)
    first, second = _collect(ds), _collect(ds)
    np.testing.assert_array_equal(first[0], second[0])
    assert len(first[1]) == 9


def test_memory_cache_serves_later_epochs_without_the_files(tmp_path):
    info = write_dataset(tmp_path / "gone", counts={"train": 10})
    ds = make_dataset(info, "train", 4, cache="memory", training=True)
    assert len(_collect(ds)[1]) == 10
    for name in info.shards["train"]:
        os.remove(os.path.join(info.path, name))
    assert len(_collect(ds)[1]) == 10
    uncached = make_dataset(info, "train", 4, cache="none")
    with pytest.raises(tf.errors.NotFoundError):
        _collect(uncached)


def test_with_filenames_pairs_names_with_images(png_dataset):
    images, labels, names = _collect(make_dataset(png_dataset, "val", 4, with_filenames=True))
    assert names.dtype == object and len(names) == 9
    for image_id, label, name in zip(_ids(images), labels, names):
        index = int(name.decode().split("/")[1].split(".")[0])
        assert name.decode().startswith("val/")
        assert image_id == (1000 + index) * 7 % 250 and label == index % NUM_CLASSES


def test_drop_remainder_and_steps_per_epoch(png_dataset):
    ds = make_dataset(png_dataset, "train", 6, drop_remainder=True)
    sizes = [len(labels) for _, labels in ds]
    assert sizes == [6, 6, 6]
    assert steps_per_epoch(png_dataset, "train", 6, True) == 3
    assert steps_per_epoch(png_dataset, "train", 6, False) == 4
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_dataset(png_dataset, "val", 64, drop_remainder=True)


def test_repeat_runs_past_one_epoch(png_dataset):
    ds = make_dataset(png_dataset, "val", 4, repeat=True, training=True)
    assert sum(len(labels) for _, labels in ds.take(10)) == 40


def test_training_augmentation_is_applied_and_seeded(png_dataset):
    aug = AugmentConfig(brightness=40.0)
    plain = _collect(make_dataset(png_dataset, "train", 5, training=True, seed=1))[0]
    a = _collect(make_dataset(png_dataset, "train", 5, training=True, seed=1, augment=aug))[0]
    b = _collect(make_dataset(png_dataset, "train", 5, training=True, seed=1, augment=aug))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, plain)
    assert a.min() >= 0 and a.max() <= 255
    evaluation = _collect(make_dataset(png_dataset, "train", 5, augment=aug))[0]
    assert set(_ids(evaluation)) == {(i * 7) % 250 for i in range(20)}


@pytest.mark.parametrize("split", ["test", "bogus"])
def test_empty_or_unknown_split_names_split_and_dataset(png_dataset, split):
    with pytest.raises(ValueError, match=f"{split}.*{png_dataset.path}"):
        make_dataset(png_dataset, split, 4)
    with pytest.raises(ValueError, match=split):
        load_arrays(png_dataset.path, split)


def test_invalid_arguments_are_named(png_dataset):
    with pytest.raises(ValueError, match="cache"):
        make_dataset(png_dataset, "train", 4, cache="disk")
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(png_dataset, "train", 0)
    with pytest.raises(ValueError, match="limit"):
        make_dataset(png_dataset, "train", 4, limit=-1)
    with pytest.raises(ValueError, match="augment.zoom"):
        make_dataset(png_dataset, "train", 4, training=True, augment=AugmentConfig(zoom=2.0))


def test_cardinality_is_known_for_keras(png_dataset):
    ds = make_dataset(png_dataset, "train", 6, training=True, augment=AugmentConfig(flip_vertical=True))
    assert int(ds.cardinality()) == steps_per_epoch(png_dataset, "train", 6, False) == 4
    sharded = make_dataset(png_dataset, "train", 4, num_shards=3, shard_index=1, drop_remainder=True)
    assert int(sharded.cardinality()) == steps_per_epoch(png_dataset, "train", 4, True, num_shards=3) == 1


@pytest.mark.parametrize("budget, cached", [(2**30, True), (0, False)])
def test_auto_cache_depends_on_the_memory_budget(tmp_path, monkeypatch, budget, cached):
    from vispipe.data import inputs

    monkeypatch.setattr(inputs, "CACHE_MAX_BYTES", budget)
    info = write_dataset(tmp_path / "auto", counts={"train": 10})
    ds = make_dataset(info, "train", 4, cache="auto", training=True)
    assert len(_collect(ds)[1]) == 10
    for name in info.shards["train"]:
        os.remove(os.path.join(info.path, name))
    if cached:
        assert len(_collect(ds)[1]) == 10
    else:
        with pytest.raises(tf.errors.NotFoundError):
            _collect(ds)
