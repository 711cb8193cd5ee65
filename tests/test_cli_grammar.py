"""One config grammar for every verb: --config < flags < --set, keys from the root, old
spellings still accepted with a one-line deprecation notice. Cheap: no training."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import pytest

from vispipe.cli import SETTINGS, build_parser, main
from vispipe.cli_grammar import REMOVED_IN, field_at, resolve
from vispipe.configs import OPTIMIZERS, TrainConfig
from vispipe.export.cli import EXPORT_SETTINGS
from vispipe.export.options import ExportOptions


def _subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(path: list[str]) -> set[str]:
    """The documented options (old spellings are accepted but hidden)."""
    return {o for a in _subparser(path)._actions for o in a.option_strings
            if a.help != argparse.SUPPRESS}


@pytest.mark.parametrize("verb", [["dataset", "create"], ["train"], ["lr-find"], ["lr-plot"],
                                  ["evaluate"], ["classify"], ["visualize"], ["export"]])
def test_every_settings_verb_takes_config_set_and_json(verb):
    assert {"--config", "--set", "--json"} <= _options(verb)


@pytest.mark.parametrize("verb", [["dataset", "create"], ["lr-find"], ["lr-plot"],
                                  ["evaluate"], ["classify"], ["visualize"], ["export"],
                                  ["run"]])
def test_the_output_is_always_out(verb):
    options = _options(verb)
    assert "--out" in options and "--output" not in options and "--csv" not in options


@pytest.mark.parametrize("verb", [["train"], ["evaluate"], ["classify"], ["visualize"],
                                  ["export"], ["upgrade-run"]])
def test_the_run_folder_is_always_run(verb):
    assert "--run" in _options(verb)


def test_every_flag_names_a_key_of_the_tree():
    for flags in SETTINGS.values():
        for flag in flags:
            for key in flag.keys:
                field_at(key)
    for flag in EXPORT_SETTINGS:
        assert flag.key.startswith("export.")
        field_at(flag.key, {"export": ExportOptions})


def test_flags_take_choices_and_defaults_from_the_dataclasses():
    option = next(a for a in _subparser(["train"])._actions if "--optimizer" in a.option_strings)
    assert tuple(option.choices) == OPTIMIZERS
    epochs = next(a for a in _subparser(["train"])._actions if "--epochs" in a.option_strings)
    assert f"default {TrainConfig().epochs}" in epochs.help and "train.epochs" in epochs.help


def test_config_file_then_flags_then_set(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: {epochs: 3, batch_size: 8}\nmodel: {name: resnet20}\n")
    parser = build_parser()

    def epochs(*extra):
        return resolve(parser.parse_args(["train", "--config", str(config), *extra])).train

    assert (epochs().epochs, epochs().batch_size) == (3, 8)
    assert epochs("--epochs", "4").epochs == 4
    assert epochs("--epochs", "4", "--set", "train.epochs=5").epochs == 5
    assert resolve(parser.parse_args(["train", "--config", str(config)])).model.name == "resnet20"


def test_a_bad_value_names_the_file_and_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train: {optimizer: lion}\n")
    assert main(["train", "--config", str(config), "--dataset", "d", "--run", "r"]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: train.optimizer: expected one of sgd" in err and "got 'lion'" in err


def test_export_options_load_from_yaml_through_the_same_checker(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("export: {formats: [tflite], top_k: 3, sparsities: [0.9]}\n")
    parser = build_parser()
    args = parser.parse_args(["export", "--config", str(config), "--run", "r", "--out", "o",
                              "--which", "best"])
    section = resolve(args).export
    from vispipe.config_io import ConfigError, from_dict

    options = from_dict(ExportOptions, section, "export")
    assert options == dataclasses.replace(ExportOptions(), formats=("tflite",), top_k=3,
                                          sparsities=(0.9,), which="best")
    with pytest.raises(ConfigError, match="export.formats: expected one of savedmodel"):
        from_dict(ExportOptions, {"formats": ["gif"]}, "export")


def _one_notice(err: str, old: str, new: str) -> None:
    notices = [line for line in err.splitlines() if "deprecated" in line]
    assert len(notices) == 1, err
    assert old in notices[0] and new in notices[0] and REMOVED_IN in notices[0]


@pytest.mark.parametrize("argv, old, new", [
    (["evaluate", "{missing}"], "RUN as a positional", "--run RUN"),
    (["classify", "{missing}", "x.png"], "RUN as a positional", "--run RUN"),
    (["visualize", "{missing}", "x.png", "--out", "{tmp}/v"], "RUN as a positional",
     "--run RUN"),
    (["classify", "--run", "{missing}", "x.png", "--csv", "{tmp}/p.csv"], "--csv", "--out"),
    (["train", "--resume", "{missing}"], "RUN as a positional", "--run RUN"),
    (["dataset", "info", "{missing}"], "DATASET as a positional", "--dataset DATASET"),
    (["upgrade-run", "--run", "{missing}"], None, None),
])
def test_old_spellings_work_with_one_notice(tmp_path, capsys, argv, old, new):
    """Each old spelling reaches the verb (which then reports the missing folder)."""
    argv = [a.format(missing=str(tmp_path / "missing"), tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing" in err.splitlines()[-1]  # The verb ran, with the folder it was given.
    if old is None:
        assert "deprecated" not in err
    else:
        _one_notice(err, old, new)


def test_old_dataset_create_spellings(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["dataset", "create", "--output", str(tmp_path / "d"),
                              "--set", "image.channels=3", "--set", "dataset.seed=7"])
    config = resolve(args, verb="dataset create", relative_to="dataset").dataset
    assert (config.output, config.image.channels, config.seed) == (str(tmp_path / "d"), 3, 7)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--output is deprecated" in err[0] and "use --out" in err[0]
    assert "--set image.channels=... is deprecated" in err[1]
    assert "--set dataset.image.channels=..." in err[1]


def test_old_train_out_is_the_run(tmp_path, capsys):
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "r")])
    assert args.run == str(tmp_path / "r")
    _one_notice(capsys.readouterr().err, "--out", "--run")


def test_resume_takes_only_the_epoch_count(tmp_path, capsys):
    assert main(["train", "--run", str(tmp_path), "--resume", "--optimizer", "adam"]) == 2
    assert "only --epochs (train.epochs) may change" in capsys.readouterr().err


def test_lr_plot_json(tmp_path, capsys):
    out = str(tmp_path / "lr.png")
    assert main(["lr-plot", "--set", "train.lr.policy=cosine", "--set",
                 "train.steps_per_epoch=10", "--epochs", "3", "--out", out, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"plot_path": os.path.abspath(out), "policy": "cosine", "total_steps": 30,
                      "steps_per_epoch": 10}
