"""The SQLite registry that the CLI writes and later stages read."""

import os

import pytest

from vispipe.registry import Registry


def test_add_finish_list(tmp_path):
    reg = Registry.open(str(tmp_path / "r.db"))
    dataset = reg.add("dataset", "mnist", str(tmp_path / "ds"), {"size": 28})
    run = reg.add("run", "lenet", str(tmp_path / "run"), {"epochs": 2})
    reg.finish(dataset, "completed", {"images": 70000})
    assert reg.get(dataset).status == "completed"
    assert reg.get(dataset).summary == {"images": 70000}
    assert reg.get(dataset).finished is not None
    assert reg.get(run).status == "running"
    assert [e.id for e in reg.list()] == [run, dataset]
    assert [e.name for e in reg.list("run")] == ["lenet"]


def test_shared_between_connections(tmp_path):
    path = str(tmp_path / "r.db")
    entry = Registry.open(path).add("job", "j", ".", {})
    Registry.open(path).finish(entry, "aborted", {})
    assert Registry.open(path).get(entry).status == "aborted"


def test_default_location_follows_vispipe_home(vispipe_home):
    reg = Registry.open()
    assert reg.path.startswith(str(vispipe_home))


def test_bad_kind_status_and_id(tmp_path):
    reg = Registry.open(str(tmp_path / "r.db"))
    with pytest.raises(ValueError, match="kind must be one of"):
        reg.add("model", "x", ".", {})
    entry = reg.add("run", "x", ".", {})
    with pytest.raises(ValueError, match="status must be one of"):
        reg.finish(entry, "done", {})
    with pytest.raises(KeyError, match="No registry entry with id 999"):
        reg.get(999)


def test_delete_removes_only_that_entry(tmp_path):
    path = str(tmp_path / "r.db")
    reg = Registry.open(path)
    (tmp_path / "b").mkdir()
    keep = reg.add("run", "keep", str(tmp_path / "a"), {})
    gone = reg.add("run", "gone", str(tmp_path / "b"), {"epochs": 3})
    assert reg.delete(gone).params == {"epochs": 3}
    # Another connection (another process) no longer sees it.
    assert [e.id for e in Registry.open(path).list()] == [keep]
    with pytest.raises(KeyError, match=f"No registry entry with id {gone}"):
        reg.delete(gone)
    assert os.path.isdir(tmp_path / "b")  # The folder is the caller's to remove.


def test_recording_finishes_the_entry_by_how_the_block_ends(tmp_path):
    reg = Registry.open(str(tmp_path / "r.db"))
    with reg.recording("dataset", "ok", str(tmp_path), {"size": 8}) as entry:
        assert reg.get(entry.id).status == "running"
        entry.summary = {"images": 10}
    assert (reg.get(entry.id).status, reg.get(entry.id).summary) == ("completed", {"images": 10})
    with pytest.raises(ValueError):
        with reg.recording("dataset", "bad", str(tmp_path), {}) as failed:
            raise ValueError("no images")
    assert reg.get(failed.id).status == "failed"
    assert reg.get(failed.id).summary == {"error": "no images"}
    with pytest.raises(KeyboardInterrupt):
        with reg.recording("run", "stopped", str(tmp_path), {}) as stopped:
            stopped.summary = {"epochs_completed": 2}
            raise KeyboardInterrupt
    assert reg.get(stopped.id).status == "interrupted"
    # A resumed run continues its entry.
    with reg.recording("run", "stopped", str(tmp_path), {}, entry_id=stopped.id) as resumed:
        assert reg.get(stopped.id).status == "running"
    assert resumed.id == stopped.id and reg.get(stopped.id).status == "completed"


def test_best_effort_recording_never_fails_the_work(tmp_path):
    reg = Registry.open(str(tmp_path / "r.db"))
    reg.close()  # Every statement now fails with sqlite3.ProgrammingError.
    with reg.recording("run", "x", ".", {}, best_effort=True) as entry:
        entry.summary = {"done": True}
    assert entry.id is None
    with pytest.raises(Exception, match="closed database"):
        with reg.recording("run", "x", ".", {}):
            pass
