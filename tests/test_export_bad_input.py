"""`export_model` and `vispipe export` refuse bad input with a clear error."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("tensorflow")

from test_export_formats import make_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(str(tmp_path_factory.mktemp("bad-input")), epochs=1)


def _export(run_dir, out, formats="tflite", **options):
    from vispipe.export import ExportOptions, export_model

    return export_model(run_dir, out, formats, options=ExportOptions(progress=False, **options))


def test_folder_without_run_json(tmp_path):
    from vispipe.export.contract import IncompleteRunError

    with pytest.raises(IncompleteRunError, match="run.json is missing"):
        _export(str(tmp_path), str(tmp_path / "out"))


def test_run_from_another_format_version(tiny_run, tmp_path):
    import shutil

    from vispipe.export.contract import IncompleteRunError

    run = str(tmp_path / "run")
    shutil.copytree(tiny_run[1], run)
    info = json.load(open(os.path.join(run, "run.json")))
    json.dump({**info, "version": 7}, open(os.path.join(run, "run.json"), "w"))
    with pytest.raises(IncompleteRunError, match="expected run format version 2, got 7"):
        _export(run, str(tmp_path / "out"))


@pytest.mark.parametrize("problem", ["running", "no_model", "no_labels"])
def test_incomplete_run(tiny_run, tmp_path, problem):
    import shutil

    from vispipe.export.contract import IncompleteRunError

    run = str(tmp_path / "run")
    shutil.copytree(tiny_run[1], run)
    if problem == "running":
        info = json.load(open(os.path.join(run, "run.json")))
        json.dump({**info, "status": "running"}, open(os.path.join(run, "run.json"), "w"))
        match = "status 'running'"
    elif problem == "no_model":
        os.remove(os.path.join(run, "model.keras"))
        match = "has no 'final' model"
    else:
        os.remove(os.path.join(run, "labels.txt"))
        match = "has no labels.txt"
    with pytest.raises(IncompleteRunError, match=match):
        _export(run, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_unknown_format(tiny_run, tmp_path):
    with pytest.raises(ValueError, match=r"unknown: \['tensorrt', 'onnx_int4'\]"):
        _export(tiny_run[1], str(tmp_path / "out"), "tflite,tensorrt,onnx_int4")


def test_existing_output_needs_overwrite(tiny_run, tmp_path):
    from vispipe.export import ExportOptions, export_model

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        _export(tiny_run[1], str(out))
    assert (out / "keep.txt").read_text() == "old"
    report = export_model(tiny_run[1], str(out), "savedmodel", overwrite=True,
                          options=ExportOptions(progress=False, verify_limit=8))
    assert not (out / "keep.txt").exists()
    assert report["verify_images"] == 8
    assert os.path.isfile(out / "export_report.json")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root can write into read-only folders")
def test_unwritable_output(tiny_run, tmp_path):
    from vispipe.export.api import UnwritableOutputError

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UnwritableOutputError, match="not writable"):
            _export(tiny_run[1], str(locked / "out"))
    finally:
        locked.chmod(0o700)


def test_output_under_a_file_is_unwritable(tiny_run, tmp_path):
    from vispipe.export.api import UnwritableOutputError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnwritableOutputError, match="Cannot create"):
        _export(tiny_run[1], str(blocker / "out"))


def test_representative_set_too_small(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="calibration_size: expected at least 16 images, got 4"):
        _export(tiny_run[1], str(tmp_path / "out"), calibration_size=4)


def test_cli_reports_bad_input_as_an_error(tiny_run, tmp_path, capsys):
    import argparse

    from vispipe.export.cli import add_export_parser

    parser = argparse.ArgumentParser(prog="vispipe")
    add_export_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["export", "--run", tiny_run[1], "--out", str(tmp_path / "o"),
                              "--formats", "tflite,bogus"])
    with pytest.raises(ValueError, match="bogus"):
        args.handler(args)
    args = parser.parse_args(["export", "--run", tiny_run[1], "--out", str(tmp_path / "o"),
                              "--formats", "savedmodel", "--set", "export.verify_limit=4"])
    assert args.handler(args) == 0
    assert "| savedmodel | passed |" in capsys.readouterr().out
