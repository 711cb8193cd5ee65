"""`vispipe run`: dataset -> train -> evaluate from one pipeline file, end to end."""

import json
import os


from vispipe.cli import main
from vispipe.registry import Registry

from conftest import REPO_ROOT


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_digits_demo_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = _run_json(capsys, [
        "run", os.path.join(REPO_ROOT, "pipelines", "digits-demo.yaml"),
        "--out", str(out), "--set", "train.epochs=4", "--json", "--quiet",
    ])
    for key in ("dataset_dir", "run_dir", "val_top1_accuracy", "test_top1_accuracy"):
        assert key in summary
    # Four epochs on 1,078 real digit scans are far above chance (10%).
    assert summary["test_top1_accuracy"] > 0.6
    run_dir = summary["run_dir"]
    for name in ("run.json", "config.yaml", "metrics.jsonl", "curves.png", "model.keras"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert os.path.isfile(os.path.join(run_dir, "eval-test", "confusion_matrix.png"))
    info = json.load(open(os.path.join(summary["dataset_dir"], "dataset.json")))
    assert sum(info["split_counts"].values()) == 1797
    kinds = {e.kind: e.status for e in Registry.open().list()}
    assert kinds == {"dataset": "completed", "run": "completed"}


def test_pipeline_on_real_mnist_subset(tmp_path, capsys, mnist_small):
    summary = _run_json(capsys, [
        "run", os.path.join(REPO_ROOT, "pipelines", "mnist-lenet.yaml"),
        "--out", str(tmp_path / "mnist"),
        "--set", "dataset.archive=",
        "--set", f"dataset.train_dir={mnist_small}/train",
        "--set", f"dataset.test_dir={mnist_small}/test",
        "--set", "dataset.val_percent=20",
        "--set", "train.epochs=3", "--set", "train.batch_size=32",
        "--json", "--quiet",
    ])
    info = json.load(open(os.path.join(summary["dataset_dir"], "dataset.json")))
    assert info["split_counts"] == {"train": 240, "val": 60, "test": 300}
    assert summary["test_top1_accuracy"] > 0.5


def test_pipeline_reuses_an_identical_dataset(tmp_path, capsys):
    pipeline = os.path.join(REPO_ROOT, "pipelines", "digits-demo.yaml")
    dataset = str(tmp_path / "ds")
    args = ["run", pipeline, "--set", f"dataset.output={dataset}", "--set", "train.epochs=1",
            "--json", "--quiet"]
    first = _run_json(capsys, args + ["--out", str(tmp_path / "a")])
    stamp = os.path.getmtime(os.path.join(dataset, "dataset.json"))
    second = _run_json(capsys, args + ["--out", str(tmp_path / "b")])
    assert first["dataset_dir"] == second["dataset_dir"] == dataset
    assert os.path.getmtime(os.path.join(dataset, "dataset.json")) == stamp


def test_bad_pipeline_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    assert main(["run", str(bad)]) == 2
    assert "train.epochs: expected int, got str 'many'" in capsys.readouterr().err
