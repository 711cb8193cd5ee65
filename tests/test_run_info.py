"""run.json as a typed `RunInfo`: what a run records for later stages, and old runs."""

from __future__ import annotations

import json
import os

import pytest

from vispipe.config_io import ConfigError
from vispipe.configs import ModelConfig, TrainConfig
from vispipe.data.format import INFO_FILE, DatasetInfo, ImageInput
from vispipe.train.run_folder import RunFolder, read_run_info, upgrade_run_folder
from vispipe.train.run_info import Normalization, OutdatedRunError, RunInfo


def _dataset(folder, resize_mode: str = "crop") -> str:
    """A dataset.json (no shards: only its record is read here)."""
    os.makedirs(folder)
    info = DatasetInfo(
        path=str(folder), classes=["cat", "dog"], height=20, width=24, channels=3,
        encoding="jpeg", split_counts={"train": 4}, class_counts={}, shards={},
        mean_pixel=[1.0, 2.0, 3.0], std_pixel=[4.0, 5.0, 6.0],
        options={"image": {"height": 20, "width": 24, "channels": 3,
                           "resize_mode": resize_mode, "encoding": "jpeg"}})
    with open(os.path.join(folder, INFO_FILE), "w") as f:
        json.dump(info.to_json(), f)
    return str(folder)


def _format1_run(folder, dataset_dir: str) -> str:
    """A run.json as vispipe wrote it before RunInfo (format 1)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump({"version": 1, "name": "old", "status": "completed",
                   "dataset_dir": dataset_dir, "classes": ["cat", "dog"],
                   "image_shape": [20, 24, 3], "model": {"name": "lenet"},
                   "train": {"epochs": 2},
                   "preprocess": {"mode": "standardize", "mean": [1.0, 2.0, 3.0],
                                  "std": [4.0, 5.0, 6.0]},
                   "device": {}, "created": "2026-01-01T00:00:00+00:00", "finished": None,
                   "epochs_completed": 2, "result": {}, "registry_id": None}, f)
    return str(folder)


def test_run_info_round_trips_through_run_json(tmp_path):
    info = RunInfo(name="r", dataset_dir="/d", classes=["a", "b"],
                   image=ImageInput(32, 32, 3, "half_crop"),
                   normalization=Normalization("pixel", mean=[1.0, 2.0, 3.0]),
                   model=ModelConfig(name="resnet20"), train=TrainConfig(epochs=3))
    run = RunFolder(tmp_path / "run")
    run.write_info(info)
    with open(run.info_path) as f:
        stored = json.load(f)
    assert stored["version"] == 2 and "path" not in stored
    assert stored["image"] == {"height": 32, "width": 32, "channels": 3,
                               "resize_mode": "half_crop"}
    assert read_run_info(run.path) == info
    assert read_run_info(run.path).path == run.path


def test_a_missing_field_is_named(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_info(RunInfo(name="r", dataset_dir="/d", classes=["a"],
                           image=ImageInput(8, 8, 1, "squash"),
                           normalization=Normalization("none"), model=ModelConfig(),
                           train=TrainConfig()))
    data = json.load(open(run.info_path))
    del data["image"]["resize_mode"]
    json.dump(data, open(run.info_path, "w"))
    with pytest.raises(ConfigError, match=r"run.json: image.resize_mode: missing"):
        read_run_info(run.path)
    data["image"]["resize_mode"] = "stretch"
    json.dump(data, open(run.info_path, "w"))
    with pytest.raises(ConfigError, match=r"image.resize_mode: expected one of squash"):
        read_run_info(run.path)


def test_a_format_1_run_says_how_to_upgrade(tmp_path):
    run_dir = _format1_run(tmp_path / "run", _dataset(tmp_path / "data"))
    with pytest.raises(OutdatedRunError,
                       match=rf"no 'image'.*vispipe upgrade-run --run {run_dir}"):
        read_run_info(run_dir)


def test_upgrade_copies_the_resize_mode_from_the_dataset(tmp_path):
    dataset = _dataset(tmp_path / "data", resize_mode="crop")
    run_dir = _format1_run(tmp_path / "run", dataset)
    upgraded = upgrade_run_folder(run_dir)
    assert upgraded.image == ImageInput(20, 24, 3, "crop")
    assert upgraded.normalization == Normalization("standardize", [1.0, 2.0, 3.0],
                                                   [4.0, 5.0, 6.0])
    assert read_run_info(run_dir) == upgraded
    # Once upgraded, the run no longer needs its dataset to load images.
    os.remove(os.path.join(dataset, INFO_FILE))
    assert read_run_info(run_dir).image.resize_mode == "crop"


def test_upgrade_without_the_dataset_needs_the_resize_mode(tmp_path):
    run_dir = _format1_run(tmp_path / "run", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=r"image.resize_mode cannot be copied.*--resize-mode"):
        upgrade_run_folder(run_dir)
    assert upgrade_run_folder(run_dir, resize_mode="fill").image.resize_mode == "fill"


def test_the_cli_upgrades_an_old_run(tmp_path, capsys):
    from vispipe.cli import main

    run_dir = _format1_run(tmp_path / "run", _dataset(tmp_path / "data", resize_mode="fill"))
    assert main(["classify", "--run", run_dir, str(tmp_path)]) == 2
    assert "vispipe upgrade-run --run" in capsys.readouterr().err
    assert main(["upgrade-run", "--run", run_dir]) == 0
    assert "fill" in capsys.readouterr().out
    assert read_run_info(run_dir).image.resize_mode == "fill"
