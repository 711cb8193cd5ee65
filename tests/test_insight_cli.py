"""Issue 17 through the command line, on real MNIST with digits 2 and 7 cut to
about 8% of the others: the imbalance `dataset create` reports, class weights
and the balanced sampler raising the minority recall, balanced accuracy and
per-class recall in `evaluate`, `evaluate --tta` / `classify --tta`,
`classify --explain` and the Grad-CAM top-losses grid, MLflow tracking beside
TensorBoard, `vispipe tune` and `vispipe mislabels`.

Cost: about 90 s on 2 idle cores: a 660-image dataset, three 4-epoch LeNet
runs (none / auto weights / balanced sampler), a 2-trial search of 2 epochs
and a 2-fold mislabels search of 1 epoch.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from insight_data import copy_classes, extracted
from vispipe.cli import main

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).

MINORITY = ("2", "7")
TRAIN_FLAGS = ["--model", "lenet", "--epochs", "4", "--batch-size", "32", "--optimizer", "adam",
               "--lr", "0.001", "--set", "train.mixed_precision='off'",
               "--set", "train.augment.translate=0.1", "--set", "train.log_every_steps=1000"]


def _vispipe(capsys, *argv: str) -> dict:
    """Runs `vispipe ARGV --json` in this process; returns its JSON."""
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def mnist_root() -> str:
    return extracted("mnist-png.tar.gz", 100)


@pytest.fixture(scope="module")
def dataset(mnist_root, tmp_path_factory) -> tuple[str, dict]:
    """`dataset create --json` on MNIST whose digits 2 and 7 keep 8 of 100 images."""
    source = copy_classes(mnist_root, "train", str(tmp_path_factory.mktemp("cut") / "train"),
                          {name: 8 for name in MINORITY})
    out = str(tmp_path_factory.mktemp("data") / "mnist-cut")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", str(tmp_path_factory.mktemp("home")))
        summary = _run_json(["dataset", "create", "--train-dir", source, "--test-dir",
                             os.path.join(mnist_root, "test"), "--out", out, "--size", "28x28",
                             "--channels", "1", "--val-percent", "20", "--workers", "1"])
    return out, summary


def _run_json(argv: list[str]) -> dict:
    """`vispipe ARGV --json` in this process, stdout captured without capsys (module fixtures)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main([*argv, "--json", "--quiet"]) == 0
    return json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory) -> dict[str, str]:
    """Three runs of the same LeNet: no weights (tracked in MLflow), auto weights, balanced sampler."""
    folder = tmp_path_factory.mktemp("runs")
    variants = {
        "none": ["--tracking", "mlflow", "--tracking-uri",
                 f"sqlite:///{folder / 'mlflow.db'}"],
        "auto": ["--class-weight", "auto"],
        "sampler": ["--sampler", "balanced"],
    }
    paths = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", str(tmp_path_factory.mktemp("home")))
        for name, flags in variants.items():
            paths[name] = str(folder / name)
            _run_json(["train", "--dataset", dataset[0], "--run", paths[name], *TRAIN_FLAGS,
                       *flags])
    return paths


def _recalls(evaluation: dict) -> dict[str, float]:
    return {row["class"]: row["recall"] for row in evaluation["per_class"]}


def test_dataset_create_reports_the_imbalance(dataset, capsys):
    out, summary = dataset
    ratios = summary["imbalance_ratio"]
    assert ratios["train"] == pytest.approx(80 / 6, rel=0.15)  # 80 per digit vs 6 or 7.
    assert ratios["test"] == pytest.approx(1.0)
    assert main(["dataset", "info", "--dataset", out]) == 0
    text = capsys.readouterr().out
    assert "Imbalance (largest / smallest class): train " in text and "--class-weight auto" in text


def test_class_weights_and_the_balanced_sampler_raise_the_minority_recall(runs, capsys):
    results = {name: _vispipe(capsys, "evaluate", "--run", path, "--split", "test", "--quiet")
               ["evaluations"]["test"] for name, path in runs.items()}
    for evaluation in results.values():
        recalls = _recalls(evaluation)
        assert evaluation["balanced_accuracy"] == pytest.approx(np.mean(list(recalls.values())))
    minority = {name: np.mean([_recalls(e)[d] for d in MINORITY]) for name, e in results.items()}
    # 100 test images per digit: 0.1 is 20 more minority digits recognised.
    assert minority["auto"] > minority["none"] + 0.1, minority
    assert minority["sampler"] > minority["none"] + 0.1, minority
    with open(os.path.join(runs["auto"], "run.json")) as f:
        assert json.load(f)["train"]["class_weight"] == "auto"


def test_evaluate_tta_reports_the_change_and_grad_cam_marks_the_top_losses(runs, capsys):
    plain = _vispipe(capsys, "evaluate", "--run", runs["auto"], "--split", "test",
                     "--quiet")["evaluations"]["test"]
    out = os.path.join(runs["auto"], "tta")
    tta = _vispipe(capsys, "evaluate", "--run", runs["auto"], "--split", "test", "--tta",
                   "--out", out, "--quiet")["evaluations"]["test"]
    assert plain["tta"] is None
    # translate=0.1 of 28 pixels: the image and 4 shifts of 1 pixel.
    assert tta["tta"]["views"] == ["identity", "shift(+0,-1)", "shift(+0,+1)", "shift(-1,+0)",
                                   "shift(+1,+0)"]
    assert tta["tta"]["top1_accuracy_without"] == pytest.approx(plain["top1_accuracy"])
    assert tta["top1_accuracy"] == pytest.approx(tta["tta"]["top1_accuracy"])
    assert tta["mean_loss"] != pytest.approx(plain["mean_loss"], abs=1e-6)
    for files in (plain["files"], tta["files"]):
        grid = Image.open(files["top_losses_gradcam_png"])
        assert grid.size == Image.open(files["top_losses_png"]).size
        assert np.asarray(grid.convert("RGB")).std() > 0


def test_classify_tta_and_explain_write_an_overlay_per_image(runs, mnist_root, tmp_path, capsys):
    folder, inputs = os.path.join(mnist_root, "test", "7"), tmp_path / "images"
    inputs.mkdir()
    (tmp_path / "out").mkdir()
    for name in sorted(os.listdir(folder))[:4]:
        os.symlink(os.path.join(folder, name), inputs / name)
    plain = _vispipe(capsys, "classify", "--run", runs["auto"], str(inputs), "--quiet")
    csv = str(tmp_path / "out" / "preds.csv")
    explained = _vispipe(capsys, "classify", "--run", runs["auto"], str(inputs), "--tta",
                         "--explain", "--out", csv, "--quiet")
    overlays = [p["explanation"] for p in explained["predictions"]]
    assert all(os.path.dirname(p) == str(tmp_path / "out" / "preds-explain") for p in overlays)
    for path in overlays:
        overlay = np.asarray(Image.open(path))
        assert overlay.shape[2] == 3 and overlay.shape[0] >= 128  # Colour, upscaled from 28.
        assert np.abs(overlay[..., 0].astype(int) - overlay[..., 2]).max() > 50  # A heat map.
    assert [p["probability"] for p in plain["predictions"]] != pytest.approx(
        [p["probability"] for p in explained["predictions"]], abs=1e-6)
    assert all(p["explanation"] is None for p in plain["predictions"])


def test_training_is_tracked_in_mlflow_and_tensorboard(runs):
    from mlflow.tracking import MlflowClient

    run = runs["none"]
    with open(os.path.join(run, "mlflow.json")) as f:
        recorded = json.load(f)
    client = MlflowClient(tracking_uri=recorded["tracking_uri"])
    logged = client.get_run(recorded["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["train.optimizer"] == "adam"
    assert [m.step for m in client.get_metric_history(recorded["run_id"], "val_accuracy")] == [
        1, 2, 3, 4]
    assert {a.path for a in client.list_artifacts(recorded["run_id"])} >= {
        "curves.png", "metrics.jsonl", "run.json"}
    database = recorded["tracking_uri"][len("sqlite:///"):]  # Files beside it, not in ./mlruns.
    assert os.path.isdir(os.path.join(os.path.dirname(database), "artifacts"))
    assert not os.path.exists(os.path.join(runs["auto"], "mlflow.json"))  # Off by default.
    tensorboard = os.path.join(run, "tensorboard")
    assert any(files for _, _, files in os.walk(tensorboard))


def test_tune_command_searches_from_a_pipeline_file(dataset, tmp_path, capsys):
    pipeline = tmp_path / "bad-lr.yaml"
    pipeline.write_text(
        "name: bad-lr\nmodel: {name: lenet}\n"
        "train: {epochs: 2, batch_size: 32, optimizer: sgd, lr: {base_lr: 1.0e-5},"
        " mixed_precision: 'off', log_every_steps: 1000}\n"
        "tune:\n  space:\n    train.lr.base_lr: {low: 0.01, high: 0.1, log: true}\n")
    out = str(tmp_path / "search")
    argv = ["tune", str(pipeline), "--trials", "2", "--isolation", "inline", "--seed", "3",
            "--dataset", dataset[0], "--out", out, "--quiet"]
    result = _vispipe(capsys, *argv)
    assert [t["state"] for t in result["trials"]] == ["COMPLETE", "COMPLETE"]
    assert result["baseline"]["params"] == {"train.lr.base_lr": 1e-5}
    assert result["best"]["value"] > result["baseline"]["value"] + 0.2
    assert os.path.isfile(result["files"]["plot"])
    assert _vispipe(capsys, *argv)["trials"] == result["trials"]  # Done: nothing reruns.


def test_mislabels_command_writes_the_csv_to_fix_labels_from(runs, dataset, capsys):
    found = _vispipe(capsys, "mislabels", "--run", runs["none"], "--folds", "2", "--epochs",
                     "1", "--quiet")
    assert found["num_images"] == dataset[1]["split_counts"]["train"]
    with open(found["files"]["csv"], encoding="utf-8") as f:
        assert f.readline().startswith("rank,filename,given_label,suggested_label")
    assert os.path.dirname(found["files"]["csv"]) == os.path.join(runs["none"], "mislabels")
