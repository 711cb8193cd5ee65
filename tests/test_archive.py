"""Datasets packed as archives are unpacked once into the cache."""

import os
import tarfile
import zipfile

import pytest

from vispipe.configs import DatasetConfig
from vispipe.data.archive import resolve_archive, unpack_archive


def _tar(tmp_path, members):
    src = tmp_path / "src"
    for name in members:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            tar.add(src / name, arcname=name)
    return str(path)


def test_unpacks_once_and_reuses(tmp_path):
    archive = _tar(tmp_path, ["set/train/a/1.png", "set/train/b/2.png"])
    first = unpack_archive(archive)
    assert os.path.isfile(os.path.join(first, "set/train/a/1.png"))
    marker = os.path.join(first, "marker")
    open(marker, "w").close()
    assert unpack_archive(archive) == first and os.path.exists(marker)


def test_resolve_rewrites_paths_inside_archive(tmp_path):
    archive = _tar(tmp_path, ["set/train/a/1.png"])
    config = resolve_archive(DatasetConfig(archive=archive, train_dir="set/train", output="o"))
    assert config.archive == ""
    assert os.path.isdir(config.train_dir)
    assert config.output == "o"


def test_zip_with_traversal_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("../evil.txt", "x")
    with pytest.raises(ValueError, match="unsafe path"):
        unpack_archive(str(path))
    assert not (tmp_path / "evil.txt").exists()


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        unpack_archive(str(tmp_path / "none.tar.gz"))
    other = tmp_path / "data.rar"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="expected one of"):
        unpack_archive(str(other))
