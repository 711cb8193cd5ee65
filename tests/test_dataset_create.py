"""Creating TFRecord datasets from folders, lists and built-in data (vispipe.data.create)."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vispipe.configs import DatasetConfig, ImageOptions
from vispipe.data import create as create_module
from vispipe.data.builtin import write_sklearn_digits
from vispipe.data.create import DatasetExistsError, create_dataset
from vispipe.data.format import (
    FEATURE_CHANNELS,
    FEATURE_FILENAME,
    FEATURE_FORMAT,
    FEATURE_HEIGHT,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    FEATURE_WIDTH,
    read_dataset_info,
)
from vispipe.data.images import decode_image, load_image


def _image(seed: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _folder(root, counts: dict[str, int], seed: int = 0, ext: str = "png") -> str:
    """One sub-folder per class with `counts[name]` distinct images."""
    for c, (name, count) in enumerate(counts.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            _image(seed * 1000 + c * 100 + i).save(root / name / f"{i:03d}.{ext}")
    return str(root)


def _config(tmp_path, **kwargs) -> DatasetConfig:
    kwargs.setdefault("output", str(tmp_path / "ds"))
    kwargs.setdefault("image", ImageOptions(height=8, width=8, channels=1))
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("val_percent", 0.0)
    return DatasetConfig(**kwargs)


def _records(info, split: str) -> list[dict]:
    """Every record of a split, parsed with TensorFlow, in file order."""
    import tensorflow as tf

    out = []
    for raw in tf.data.TFRecordDataset(info.shard_paths(split)):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        out.append({
            key: (feature[key].bytes_list.value[0] if feature[key].bytes_list.value
                  else feature[key].int64_list.value[0])
            for key in feature
        })
    return out


def _create(config: DatasetConfig):
    return create_dataset(config, progress=False)


def test_folder_dataset_has_shards_labels_mean_and_info(tmp_path):
    source = _folder(tmp_path / "src", {"cat": 6, "dog": 4})
    info = _create(_config(tmp_path, source=source, shard_size=3))
    assert info.classes == ["cat", "dog"]
    assert info.split_counts == {"train": 10, "val": 0, "test": 0}
    assert info.class_counts["train"] == {"cat": 6, "dog": 4}
    assert info.shards["train"] == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert sorted(os.listdir(info.path)) == sorted(
        info.shards["train"] + ["dataset.json", "labels.txt", "mean.npy", "mean.png",
                                "rejected.csv"]
    )
    with open(os.path.join(info.path, "labels.txt")) as f:
        assert f.read() == "cat\ndog\n"
    with open(os.path.join(info.path, "rejected.csv")) as f:
        assert f.read().strip() == "path,reason"

    records = _records(info, "train")
    stored = [decode_image(r[FEATURE_IMAGE], "png", 8, 8, 1) for r in records]
    for record, array in zip(records, stored):
        assert record[FEATURE_FORMAT] == b"png"
        assert (record[FEATURE_HEIGHT], record[FEATURE_WIDTH], record[FEATURE_CHANNELS]) == (8, 8, 1)
        name = record[FEATURE_FILENAME].decode()
        assert info.classes[record[FEATURE_LABEL]] == name.split("/")[0]
        expected, _ = load_image(os.path.join(source, name), info_options(info))
        np.testing.assert_array_equal(array, expected)
    # Training records are shuffled, so shards mix the classes.
    labels = [r[FEATURE_LABEL] for r in records]
    assert labels != sorted(labels)

    mean = np.load(os.path.join(info.path, "mean.npy"))
    assert mean.dtype == np.float32 and mean.shape == (8, 8, 1)
    np.testing.assert_allclose(mean, np.mean(stored, axis=0), rtol=1e-5)
    assert info.mean_pixel == pytest.approx([np.mean(stored)])
    assert info.std_pixel == pytest.approx([np.std(stored)])

    reread = read_dataset_info(info.path)
    assert reread == info
    assert reread.options["source"] == source
    assert reread.source == {"kind": "folder", "source": os.path.abspath(source)}
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]


def info_options(info) -> ImageOptions:
    return ImageOptions(**info.options["image"])


def test_bad_files_are_rejected_with_reasons_and_conversions_listed(tmp_path):
    source = _folder(tmp_path / "src", {"a": 3, "b": 3})
    (tmp_path / "src" / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "src" / "a" / "notes.jpg").write_text("not an image")
    data = (tmp_path / "src" / "b" / "000.png").read_bytes()
    (tmp_path / "src" / "b" / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "src" / "b" / "README.txt").write_text("ignored: not an image extension")
    Image.new("CMYK", (8, 8)).save(tmp_path / "src" / "b" / "print.jpg")
    Image.new("RGBA", (8, 8)).save(tmp_path / "src" / "a" / "alpha.png")

    info = _create(_config(tmp_path, source=source, workers=2))
    reasons = {os.path.basename(r["path"]): r["reason"] for r in info.rejected}
    assert reasons == {
        "empty.png": "empty file (0 bytes)",
        "notes.jpg": "not an image (unrecognized format)",
        "cut.png": reasons["cut.png"],
    }
    assert reasons["cut.png"].startswith("corrupt or truncated image")
    converted = {os.path.basename(c["path"]): c["from"] for c in info.converted}
    assert converted == {
        "print.jpg": "CMYK->RGB, RGB->gray",
        "alpha.png": "RGBA->RGB (alpha composited on white), RGB->gray",
    }
    assert info.class_counts["train"] == {"a": 4, "b": 4}
    with open(os.path.join(info.path, "rejected.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {os.path.basename(row["path"]): row["reason"] for row in rows} == reasons


def test_split_is_stratified_and_deterministic_per_seed(tmp_path):
    source = _folder(tmp_path / "src", {"a": 20, "b": 8})
    first = _create(_config(tmp_path, source=source, val_percent=25, test_percent=10,
                            output=str(tmp_path / "one")))
    assert first.class_counts == {
        "train": {"a": 13, "b": 5}, "val": {"a": 5, "b": 2}, "test": {"a": 2, "b": 1},
    }
    same = _create(_config(tmp_path, source=source, val_percent=25, test_percent=10,
                           output=str(tmp_path / "two"), workers=2))
    assert same.content_hash == first.content_hash
    other = _create(_config(tmp_path, source=source, val_percent=25, test_percent=10,
                            output=str(tmp_path / "three"), seed=7))
    assert other.content_hash != first.content_hash
    names = lambda info: {r[FEATURE_FILENAME] for r in _records(info, "val")}
    assert names(other) != names(first)
    # Validation and test records are in sorted order.
    val_names = [r[FEATURE_FILENAME] for r in _records(first, "val")]
    assert val_names == sorted(val_names)


def test_separate_folders_and_held_out_val(tmp_path):
    train = _folder(tmp_path / "train", {"x": 8, "y": 8}, seed=1)
    test = _folder(tmp_path / "test", {"x": 2, "y": 3}, seed=2)
    info = _create(_config(tmp_path, train_dir=train, test_dir=test, val_percent=25))
    assert info.class_counts == {
        "train": {"x": 6, "y": 6}, "val": {"x": 2, "y": 2}, "test": {"x": 2, "y": 3},
    }
    assert info.source["test_dir"] == os.path.abspath(test)


def test_val_folder_with_unknown_class_is_an_error(tmp_path):
    train = _folder(tmp_path / "train", {"x": 3, "y": 3})
    val = _folder(tmp_path / "val", {"x": 2, "z": 2})
    with pytest.raises(ValueError, match=r"val_dir .* class folder\(s\) \['z'\]"):
        _create(_config(tmp_path, train_dir=train, val_dir=val))


def test_text_lists_with_names_indices_and_comments(tmp_path):
    _folder(tmp_path / "img", {"a": 3, "b": 3})
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "train.txt").write_text(
        "# path label\n\nimg/a/000.png a\nimg/a/001.png 0\nimg/a/002.png a\n"
        f"{tmp_path}/img/b/000.png b\nimg/b/001.png 1\n"
    )
    (tmp_path / "val.txt").write_text("img/b/002.png b\n")
    info = _create(_config(tmp_path, train_list=str(tmp_path / "train.txt"),
                           val_list=str(tmp_path / "val.txt"),
                           labels_file=str(tmp_path / "labels.txt")))
    assert info.class_counts["train"] == {"a": 3, "b": 2}
    assert info.class_counts["val"] == {"a": 0, "b": 1}
    assert [r[FEATURE_FILENAME] for r in _records(info, "val")] == [b"img/b/002.png"]


def test_text_list_errors_name_file_and_line(tmp_path):
    _folder(tmp_path / "img", {"a": 2})
    (tmp_path / "labels.txt").write_text("a\nb\n")
    listing = tmp_path / "train.txt"
    kwargs = dict(train_list=str(listing), labels_file=str(tmp_path / "labels.txt"))

    listing.write_text("img/a/000.png a\nimg/a/missing.png a\n")
    with pytest.raises(FileNotFoundError, match=rf"{listing}:2: image file .*missing.png"):
        _create(_config(tmp_path, **kwargs))

    listing.write_text("# header\nimg/a/000.png a\nimg/a/001.png cow\n")
    with pytest.raises(ValueError, match=rf"{listing}:3: unknown label 'cow'"):
        _create(_config(tmp_path, **kwargs))

    listing.write_text("img/a/000.png 2\n")
    with pytest.raises(ValueError, match=rf"{listing}:1: unknown label '2'"):
        _create(_config(tmp_path, **kwargs))


def test_min_per_class_counts_only_usable_images(tmp_path):
    source = _folder(tmp_path / "src", {"a": 4, "b": 1})
    (tmp_path / "src" / "b" / "bad.png").write_text("oops")
    with pytest.raises(ValueError, match=r"Class 'b' has 1 usable image\(s\) .*1 rejected.*"
                                         r"min_per_class=2"):
        _create(_config(tmp_path, source=source, min_per_class=2))
    assert not os.path.exists(tmp_path / "ds")
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]


def test_max_per_class_subsamples_each_split(tmp_path):
    source = _folder(tmp_path / "src", {"a": 10, "b": 3})
    config = _config(tmp_path, source=source, max_per_class=4, val_percent=20)
    info = _create(config)
    assert info.class_counts == {
        "train": {"a": 4, "b": 2}, "val": {"a": 2, "b": 1}, "test": {"a": 0, "b": 0},
    }
    again = _create(_config(tmp_path, source=source, max_per_class=4, val_percent=20,
                            output=str(tmp_path / "again")))
    assert again.content_hash == info.content_hash


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"source": "nowhere"}, FileNotFoundError,
         "Dataset source folder 'nowhere' does not exist"),
        ({}, ValueError, "No dataset source"),
        ({"source": "SRC", "builtin": "digits"}, ValueError, "Expected one dataset source, got 2"),
        ({"source": "SRC", "val_percent": 60, "test_percent": 40}, ValueError,
         r"val_percent \+ test_percent = 100"),
        ({"source": "SRC", "val_percent": -1}, ValueError, r"val_percent: expected a value in \[0, 100\)"),
        ({"source": "SRC", "image": ImageOptions(channels=2)}, ValueError,
         "image.channels: expected 1 or 3, got 2"),
        ({"source": "SRC", "image": ImageOptions(resize_mode="zoom")}, ValueError,
         "image.resize_mode: expected one of"),
        ({"source": "SRC", "image": ImageOptions(encoding="gif")}, ValueError, "image.encoding"),
        ({"source": "SRC", "image": ImageOptions(jpeg_quality=0)}, ValueError, "image.jpeg_quality"),
        ({"source": "SRC", "image": ImageOptions(height=0)}, ValueError, "image.height"),
        ({"source": "SRC", "output": ""}, ValueError, "output: expected"),
        ({"tfds_name": "mnist"}, ValueError, "needs tfds_data_dir"),
        ({"source": "SRC", "val_dir": "v"}, ValueError, "val_dir='v' belongs with train_dir"),
    ],
)
def test_invalid_configs_are_refused(tmp_path, kwargs, error, message):
    source = _folder(tmp_path / "src", {"a": 2, "b": 2})
    if kwargs.get("source") == "SRC":
        kwargs["source"] = source
    with pytest.raises(error, match=message):
        _create(_config(tmp_path, **kwargs))
    assert not os.path.exists(tmp_path / "ds")


def test_tfds_source_is_never_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="TFDS dataset 'mnist' not found in .*cannot download"):
        _create(_config(tmp_path, tfds_name="mnist", tfds_data_dir=str(tmp_path / "tfds")))
    assert not os.path.exists(tmp_path / "ds")


def test_tfds_dataset_prepared_on_disk(tmp_path):
    import tensorflow_datasets as tfds

    class VispipeTinyShapes(tfds.core.GeneratorBasedBuilder):
        """A real TFDS builder whose data is generated locally (no download)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=["dark", "light"]),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(4)}

        def _generate_examples(self, count):
            for index in range(count):
                label = index % 2
                image = np.full((8, 8, 1), 200 * label + 20, np.uint8)
                yield index, {"image": image, "label": label}

    data_dir = str(tmp_path / "tfds")
    VispipeTinyShapes(data_dir=data_dir).download_and_prepare()
    info = _create(_config(tmp_path, tfds_name="vispipe_tiny_shapes", tfds_data_dir=data_dir))
    assert info.classes == ["dark", "light"]
    assert info.split_counts == {"train": 6, "val": 0, "test": 4}
    assert info.source["kind"] == "tfds"


def test_fewer_than_two_classes_is_an_error(tmp_path):
    source = _folder(tmp_path / "src", {"only": 3})
    with pytest.raises(ValueError, match=r"expected at least 2 classes, got 1 \['only'\]"):
        _create(_config(tmp_path, source=source))


def test_existing_output_needs_overwrite(tmp_path):
    source = _folder(tmp_path / "src", {"a": 2, "b": 2})
    first = _create(_config(tmp_path, source=source))
    with pytest.raises(DatasetExistsError, match="already exists"):
        _create(_config(tmp_path, source=source))
    second = _create(_config(tmp_path, source=source, overwrite=True,
                             image=ImageOptions(height=4, width=4)))
    assert read_dataset_info(first.path).height == 4
    assert second.path == first.path


def test_interrupted_creation_leaves_no_dataset(tmp_path, monkeypatch):
    source = _folder(tmp_path / "src", {"a": 6, "b": 6})
    old = _create(_config(tmp_path, source=source))
    written = []

    def write_then_interrupt(self, record):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(record)
        original(self, record)

    original = create_module._ShardWriter.write
    monkeypatch.setattr(create_module._ShardWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _create(_config(tmp_path, source=source, overwrite=True, workers=2,
                        image=ImageOptions(height=4, width=4)))
    # The earlier dataset is untouched and nothing partial is left behind.
    assert read_dataset_info(old.path) == old
    assert sorted(os.listdir(tmp_path)) == ["ds", "src"]
    with pytest.raises(KeyboardInterrupt):
        _create(_config(tmp_path, source=source, output=str(tmp_path / "new")))
    assert sorted(os.listdir(tmp_path)) == ["ds", "src"]


def test_sigterm_during_creation_leaves_no_partial_folder(tmp_path, mnist_archive):
    # Kubernetes and the UI's abort stop jobs with SIGTERM, not Ctrl-C.
    output = tmp_path / "mnist"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vispipe.cli", "dataset", "create", "--archive", mnist_archive,
         "--source", "mnist-png/train", "--out", str(output), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # Unpacking the 70,000 files comes first: over 2 minutes on a busy 2-core machine.
    deadline = time.monotonic() + 600
    while not glob.glob(f"{tmp_path}/.mnist.partial-*/*.partial") and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard was started within 600 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw"])
def test_encodings_round_trip(tmp_path, encoding):
    root = tmp_path / "src"
    for name, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        os.makedirs(root / name)
        for i in range(2):
            Image.new("RGB", (20, 10), color).save(root / name / f"{i}.png")
    options = ImageOptions(height=8, width=8, channels=3, encoding=encoding, resize_mode="crop")
    info = _create(_config(tmp_path, source=str(root), image=options))
    assert info.encoding == encoding
    for record in _records(info, "train"):
        assert record[FEATURE_FORMAT] == encoding.encode()
        array = decode_image(record[FEATURE_IMAGE], encoding, 8, 8, 3)
        expected, _ = load_image(str(root / record[FEATURE_FILENAME].decode()), options)
        tolerance = 3 if encoding == "jpeg" else 0
        assert np.abs(array.astype(int) - expected).max() <= tolerance


def test_builtin_digits(tmp_path):
    folder = write_sklearn_digits(str(tmp_path / "digits"))
    files = [f for _, _, names in os.walk(folder) for f in names]
    assert len(files) == 1797
    assert sorted(os.listdir(folder)) == [str(d) for d in range(10)]
    with Image.open(os.path.join(folder, "0", "0000.png")) as image:
        assert image.size == (8, 8) and image.mode == "L"
        pixels = np.asarray(image)
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(pixels, np.rint(load_digits().images[0] * 255 / 16))

    info = _create(_config(tmp_path, builtin="digits", val_percent=10, workers=2,
                           image=ImageOptions(height=8, width=8)))
    assert info.classes == [str(d) for d in range(10)]
    assert sum(info.split_counts.values()) == 1797
    for digit in info.classes:  # 10% of each class, rounded
        total = info.class_counts["train"][digit] + info.class_counts["val"][digit]
        assert info.class_counts["val"][digit] == int(total / 10 + 0.5)
    assert info.source == {"kind": "builtin", "builtin": "digits"}
    assert info.rejected == [] and info.converted == []


def test_real_mnist_subset(tmp_path, mnist_small):
    info = _create(_config(
        tmp_path, train_dir=os.path.join(mnist_small, "train"),
        test_dir=os.path.join(mnist_small, "test"), val_percent=20, workers=2,
        image=ImageOptions(height=28, width=28, channels=1),
    ))
    assert info.classes == [str(d) for d in range(10)]
    assert info.split_counts == {"train": 240, "val": 60, "test": 300}
    assert info.rejected == [] and info.converted == []
    # MNIST's well-known pixel statistics, from 240 images.
    assert 25 < info.mean_pixel[0] < 42
    assert 70 < info.std_pixel[0] < 90
    with open(os.path.join(info.path, "dataset.json")) as f:
        assert json.load(f)["class_counts"]["test"]["7"] == 30


_MAIN_SCRIPT = """
import sys

with open(sys.argv[2], "a") as marker:
    marker.write(__name__ + "\\n")

if __name__ == "__main__":
    from vispipe.configs import DatasetConfig, ImageOptions
    from vispipe.data.create import create_dataset

    create_dataset(DatasetConfig(
        source=sys.argv[1], output=sys.argv[3], val_percent=0.0, workers=2,
        image=ImageOptions(height=8, width=8, channels=1),
    ), progress=False)
"""


def test_workers_start_without_the_callers_main_script(tmp_path):
    # A main script that imports TensorFlow made every worker pool import it
    # again (and garbage-collect its objects): creation ran 2x slower. The
    # script records each import of itself; only the parent's may happen.
    source = _folder(tmp_path / "src", {"a": 5, "b": 5})  # 2 chunks: a pool
    script, marker = tmp_path / "script.py", tmp_path / "imports.txt"
    script.write_text(_MAIN_SCRIPT)
    subprocess.run([sys.executable, str(script), source, str(marker), str(tmp_path / "ds")],
                   check=True, timeout=120)
    assert read_dataset_info(str(tmp_path / "ds")).split_counts["train"] == 10
    assert marker.read_text().splitlines() == ["__main__"]
