"""Pipeline files: validated, typed, overridable, portable."""

import os

import pytest

from vispipe.config_io import ConfigError, apply_overrides, expand_env, from_dict, load_pipeline
from vispipe.configs import PipelineConfig, TrainConfig

from conftest import REPO_ROOT


@pytest.mark.parametrize("name", ["digits-demo", "mnist-lenet", "cifar10-resnet"])
def test_shipped_pipelines_are_valid(name):
    config = load_pipeline(os.path.join(REPO_ROOT, "pipelines", f"{name}.yaml"))
    assert isinstance(config, PipelineConfig)
    assert config.name == name
    assert config.train.epochs > 0


def test_shipped_pipelines_have_no_absolute_paths(monkeypatch):
    monkeypatch.delenv("VISPIPE_DATASETS", raising=False)
    for name in os.listdir(os.path.join(REPO_ROOT, "pipelines")):
        config = load_pipeline(os.path.join(REPO_ROOT, "pipelines", name))
        paths = [config.dataset.archive, config.dataset.source, config.dataset.train_dir,
                 config.dataset.test_dir, config.dataset.output]
        assert not any(os.path.isabs(path) for path in paths if path), (name, paths)


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"p.yaml: train.epoch: unknown key"):
        load_pipeline(str(path))


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got str 'ten'"):
        load_pipeline(str(path))


def test_nested_wrong_type(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("dataset:\n  image: {height: 28.5}\n")
    with pytest.raises(ConfigError, match=r"dataset.image.height: expected int, got float"):
        load_pipeline(str(path))


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="expected int, got bool"):
        from_dict(TrainConfig, {"epochs": True})


def test_int_widens_to_float_and_lists_are_checked():
    config = from_dict(TrainConfig, {"lr": {"base_lr": 1, "steps": [30, 60]}})
    assert config.lr.base_lr == 1.0 and isinstance(config.lr.base_lr, float)
    with pytest.raises(ConfigError, match=r"train.lr.steps\[1\]: expected float"):
        from_dict(TrainConfig, {"lr": {"steps": [30, "x"]}}, "train")


def test_set_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epochs: 10\n")
    config = load_pipeline(str(path), ["train.epochs=1", "train.lr.policy=step", "model.name=resnet18"])
    assert config.train.epochs == 1
    assert config.train.lr.policy == "step"
    assert config.model.name == "resnet18"


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("VP_TEST_DIR", "/data")
    assert expand_env("${VP_TEST_DIR}/x") == "/data/x"
    monkeypatch.delenv("VP_TEST_DIR")
    assert expand_env("${VP_TEST_DIR:-../shared}/x") == "../shared/x"
    with pytest.raises(ConfigError, match="VP_TEST_DIR is not set"):
        expand_env("${VP_TEST_DIR}/x")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(str(tmp_path / "nope.yaml"))
