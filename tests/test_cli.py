"""The `vispipe` command, verb by verb, as a user drives it."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vispipe.cli import main


def _write_patterns(folder, per_class=24, size=20):
    """Three visually distinct classes: horizontal, vertical and diagonal stripes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {"horizontal": yy % 4 < 2, "vertical": xx % 4 < 2, "diagonal": (xx + yy) % 4 < 2}
    for name, mask in patterns.items():
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, (size, size))
            pixels = np.where(mask, 200, 30) + noise
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder


def _json(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def module_home(workspace):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", str(workspace / "home"))
        yield workspace / "home"


@pytest.fixture(autouse=True)
def vispipe_home(module_home, monkeypatch):
    """One registry for the whole module, since its dataset and run are shared."""
    monkeypatch.setenv("VISPIPE_HOME", str(module_home))
    return module_home


@pytest.fixture(scope="module")
def dataset(workspace, module_home):
    source = _write_patterns(workspace / "images")
    (source / "horizontal" / "broken.png").write_bytes(b"not an image")
    assert main(["dataset", "create", "--source", str(source), "--out", str(workspace / "ds"),
                 "--size", "16x16", "--channels", "1", "--val-percent", "25",
                 "--test-percent", "25", "--quiet"]) == 0
    return str(workspace / "ds")


@pytest.fixture(scope="module")
def run_dir(workspace, dataset):
    out = str(workspace / "run")
    assert main(["train", "--dataset", dataset, "--run", out, "--model", "lenet", "--epochs", "4",
                 "--batch-size", "8", "--optimizer", "adam", "--lr", "0.003",
                 "--set", "train.lr.policy=cosine", "--quiet"]) == 0
    return out


def test_dataset_create_reports_counts_and_rejected_file(dataset, capsys):
    info = _json(capsys, ["dataset", "info", "--dataset", dataset, "--json"])
    # 25% of each class per held-out split; the broken file is dropped after the split.
    assert sum(info["split_counts"].values()) == 72
    assert info["split_counts"]["val"] == 18
    assert [r["path"].endswith("broken.png") for r in info["rejected"]] == [True]
    assert info["classes"] == ["diagonal", "horizontal", "vertical"]


def test_dataset_create_missing_folder_is_a_clean_error(tmp_path, capsys):
    code = main(["dataset", "create", "--source", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "ds"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err and "Traceback" not in err


def test_models_lists_the_standard_networks(capsys):
    names = [m["name"] for m in _json(capsys, ["models", "--json"])["models"]]
    for name in ("lenet", "alexnet", "vgg16", "googlenet", "resnet18", "resnet34", "resnet50",
                 "mobilenet_v2", "efficientnet_b0"):
        assert name in names


def test_train_writes_a_run_that_evaluates_above_chance(run_dir, capsys):
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))
    result = _json(capsys, ["evaluate", "--run", run_dir, "--split", "test", "--json"])
    assert list(result["evaluations"]) == ["test"]
    result = result["evaluations"]["test"]
    assert result["num_images"] == 17
    assert result["top1_accuracy"] > 0.6  # chance is 1/3
    assert os.path.isfile(os.path.join(run_dir, "eval-test", "confusion_matrix.csv"))


def test_train_refuses_an_existing_run(run_dir, dataset, capsys):
    assert main(["train", "--dataset", dataset, "--run", run_dir, "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_extends_a_finished_run(run_dir, capsys):
    result = _json(capsys, ["train", "--run", run_dir, "--resume", "--epochs", "5", "--json",
                            "--quiet"])
    assert result["epochs_completed"] == 5
    epochs = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))
              if '"kind": "epoch"' in line or '"kind":"epoch"' in line]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]


def test_classify_one_image_and_a_folder(run_dir, workspace, capsys):
    image = str(workspace / "images" / "vertical" / "0.png")
    assert main(["classify", "--run", run_dir, image, "--top-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "vertical" in table
    one = _json(capsys, ["classify", "--run", run_dir, image, "--top-k", "2", "--json"])
    assert [len(p["top"]) for p in one["predictions"]] == [2]
    csv_path = str(workspace / "preds.csv")
    assert main(["classify", "--run", run_dir, str(workspace / "images"), "--out",
                 csv_path]) == 0
    lines = open(csv_path).read().splitlines()
    assert len(lines) == 1 + 3 * 24 + 1  # header, good images, the broken one reported


def test_visualize_writes_layer_stats(run_dir, workspace, capsys):
    out = str(workspace / "viz")
    result = _json(capsys, ["visualize", "--run", run_dir,
                            str(workspace / "images" / "diagonal" / "1.png"), "--out", out,
                            "--json"])
    layers = json.load(open(os.path.join(out, "layers.json")))
    assert any("conv" in layer["name"] for layer in layers["layers"])
    assert [layer["name"] for layer in result["layers"]] == [
        layer["name"] for layer in layers["layers"]]


def test_lr_plot_writes_a_png(tmp_path, capsys):
    out = str(tmp_path / "lr.png")
    result = _json(capsys, ["lr-plot", "--lr-policy", "step", "--epochs", "30", "--set",
                            "train.lr.step_size=33", "--out", out, "--json"])
    assert result["total_steps"] == 30 * 100 and result["policy"] == "step"
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_lr_find_suggests_a_rate(dataset, tmp_path, capsys):
    result = _json(capsys, ["lr-find", "--dataset", dataset, "--out", str(tmp_path),
                            "--steps", "30", "--batch-size", "8", "--json", "--quiet"])
    assert 1e-7 <= result["suggested_lr"] <= 10
    assert os.path.isfile(result["plot_path"])


def test_registry_lists_what_the_cli_did(run_dir, capsys):
    entries = _json(capsys, ["registry", "--json"])["entries"]
    assert {"dataset", "run"} <= {e["kind"] for e in entries}


def test_unknown_set_key_is_rejected(dataset, tmp_path, capsys):
    code = main(["train", "--dataset", dataset, "--run", str(tmp_path / "r"),
                 "--set", "train.epoch=3", "--quiet"])
    assert code == 2
    assert "train.epoch: unknown key" in capsys.readouterr().err


def test_dataset_create_from_a_config_file(workspace, tmp_path, capsys):
    """The config tree in a file: the shape the web UI writes."""
    config = tmp_path / "job.yaml"
    config.write_text(f"""
dataset:
  source: {workspace / "images"}
  val_percent: 25
  image: {{height: 12, width: 12, channels: 1, resize_mode: crop}}
train: {{epochs: 99}}   # other sections are read by other verbs
""")
    out = str(tmp_path / "ds")
    summary = _json(capsys, ["dataset", "create", "--config", str(config), "--out", out,
                             "--set", "dataset.image.width=14", "--json", "--quiet"])
    assert summary["split_counts"]["val"] == 18
    from vispipe.data.format import read_dataset_info

    assert read_dataset_info(out).image.shape == (12, 14, 1)
    assert read_dataset_info(out).image.resize_mode == "crop"
