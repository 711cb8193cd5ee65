"""Outputs are all-or-nothing: one temporary-name scheme for every file and folder."""

from __future__ import annotations

import json
import os

import pytest

from vispipe.fileio import atomic_path, write_json_atomic, write_text_atomic


def test_a_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with atomic_path(target) as tmp:
        # Beside the target, hidden, with the extension writers choose formats by.
        assert os.path.dirname(tmp) == str(tmp_path / "sub")
        assert os.path.basename(tmp).startswith(".model.partial-") and tmp.endswith(".keras")
        open(tmp, "w").write("new")
        assert not target.exists()
    assert target.read_text() == "new" and os.listdir(tmp_path / "sub") == ["model.keras"]


@pytest.mark.parametrize("error", [ValueError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "run.json"
    write_json_atomic(target, {"version": 2})
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("{half")
            raise error
    assert json.loads(target.read_text()) == {"version": 2}
    assert os.listdir(tmp_path) == ["run.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target, folder=True) as tmp:
        write_text_atomic(os.path.join(tmp, "new.txt"), "new")
        assert (target / "old.txt").exists()  # Still the complete old version.
    assert os.listdir(target) == ["new.txt"] and os.listdir(tmp_path) == ["dataset"]
    with pytest.raises(RuntimeError):
        with atomic_path(target, folder=True) as tmp:
            raise RuntimeError("interrupted")
    assert os.listdir(target) == ["new.txt"] and os.listdir(tmp_path) == ["dataset"]
