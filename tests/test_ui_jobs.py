"""Web UI jobs with real tiny trainings: dataset, train, abort, resume, restart.

The requests are a script's: the token in `Authorization` (no cookies, no CSRF token).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vispipe.configs import DatasetConfig, ModelConfig, TrainConfig
from vispipe.registry import Registry
from vispipe.train.run_folder import RunFolder
from vispipe.ui import UISettings, create_app
from vispipe.ui.jobs import JobQueue, read_job, resume_argv

pytestmark = pytest.mark.slow

_WAIT_S = 240


def _wait(what: str, condition, queue: JobQueue | None = None):
    """Polls `condition` (ticking `queue` when given) until it returns a truthy value."""
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        if queue is not None:
            queue.tick()
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"Timed out after {_WAIT_S} s waiting for {what}.")


def _job(job_id: int):
    return read_job(Registry.open().get(job_id))


def _entry(kind: str, path: str):
    return next((e for e in Registry.open().list(kind) if e.path == path), None)


def _finished(job_id: int):
    job = _job(job_id)
    return job if job.status not in ("queued", "running") else None


def _epochs_logged(run_dir: str) -> int:
    return len(RunFolder(run_dir).read_metrics("epoch"))


def _client(settings: UISettings, **kwargs) -> TestClient:
    return TestClient(create_app(settings, **kwargs), base_url="http://localhost",
                      headers={"Authorization": f"Bearer {settings.token}"})


def _train_form(dataset_id: int, name: str, epochs: int) -> dict:
    return {"name": name, "dataset": str(dataset_id), "network": "lenet", "epochs": str(epochs),
            "batch_size": "16", "steps_per_epoch": "2", "base_lr": "0.01", "policy": "fixed",
            "optimizer": "sgd", "seed": "1", "val_interval": "1", "snapshot_interval": "1"}


def test_dataset_train_abort_resume_classify(mnist_small):
    settings = UISettings(data_roots=[mnist_small], max_jobs=1)
    with _client(settings) as client:
        response = client.post("/datasets/new", data={
            "name": "digits <1>", "source_kind": "folder", "source": "train",
            "val_percent": "25", "channels": "1", "height": "28", "width": "28"},
            follow_redirects=False)
        assert response.status_code == 303, response.text
        dataset_job = int(response.headers["location"].rsplit("/", 1)[1])
        job = _wait("the dataset job", lambda: _finished(dataset_job))
        assert job.status == "completed", open(job.log_path).read()
        dataset = _entry("dataset", job.target)
        page = client.get(f"/jobs/{dataset_job}").text  # Redirects to the dataset page.
        assert "Dataset digits &lt;1&gt;" in page and 'id="class-counts"' in page
        # Sample images of each class, read from the train shards.
        assert page.count('class="sample"') == 40  # 10 digits x 4
        sample = client.get(f"/datasets/{dataset.id}/sample/7/3.png")
        assert sample.status_code == 200
        assert Image.open(io.BytesIO(sample.content)).size == (28, 28)
        assert client.get(f"/datasets/{dataset.id}/sample/7/4.png").status_code == 404

        response = client.post("/models/new", data=_train_form(dataset.id, "lenet & co", 200),
                               follow_redirects=False)
        assert response.status_code == 303, response.text
        train_job = int(response.headers["location"].rsplit("/", 1)[1])
        run_dir = _job(train_job).target
        _wait("a checkpoint", lambda: RunFolder(run_dir).exists()
              and RunFolder(run_dir).latest_checkpoint() is not None)
        client.post(f"/jobs/{train_job}/abort")
        job = _wait("the abort", lambda: _finished(train_job))
        assert job.status == "aborted"
        assert RunFolder(run_dir).read_run_info().status == "interrupted"
        done = _epochs_logged(run_dir)
        assert 1 <= done < 200
        run = _entry("run", run_dir)
        page = client.get(f"/runs/{run.id}").text
        assert "Resume training" in page and "lenet &amp; co" in page
        assert "Aborted after" in client.get("/").text

        response = client.post(f"/jobs/{train_job}/resume", data={"epochs": str(done + 1)},
                               follow_redirects=False)
        assert response.status_code == 303
        resume_job = int(response.headers["location"].rsplit("/", 1)[1])
        job = _wait("the resumed run", lambda: _finished(resume_job))
        assert job.status == "completed", open(job.log_path).read()
        info = RunFolder(run_dir).read_run_info()
        assert info.status == "completed" and info.epochs_completed == done + 1
        # The resume ran `vispipe train --resume --run RUN --config job.yaml` (train.epochs).
        assert job.entry.params["argv"][:4] == ["train", "--resume", "--run", run_dir]
        assert "is deprecated" not in open(job.log_path).read()

        events = client.get(f"/runs/{run.id}/events").text
        records = [json.loads(line[6:]) for line in events.splitlines()
                   if line.startswith("data: {\"kind\"")]
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, done + 2))
        assert '"status": "completed"' in events

        digit = os.path.join(mnist_small, "test", "7", sorted(os.listdir(
            os.path.join(mnist_small, "test", "7")))[0])
        with open(digit, "rb") as f:
            result = client.post(f"/runs/{run.id}/classify",
                                 files={"image": ("<7>.png", f.read(), "image/png")}).json()
        assert len(result["top"]) == 5
        assert {label for label, _ in result["top"]} <= {str(d) for d in range(10)}
        assert sum(p for _, p in result["top"]) <= 1.0001

        # Classify many: a list with labels, relative to the data root, as a background job.
        listing = [f"test/{d}/{name} {d}" for d in range(10)
                   for name in sorted(os.listdir(os.path.join(mnist_small, "test", str(d))))[:3]]
        response = client.post(f"/runs/{run.id}/classify-many", files={
            "inputs": ("digits.txt", "\n".join(listing).encode(), "text/plain")},
            follow_redirects=False)
        assert response.status_code == 303, response.text
        many_job = int(response.headers["location"].rsplit("/", 1)[1])
        job = _wait("the classification", lambda: _finished(many_job))
        assert job.status == "completed", open(job.log_path).read()
        page = client.get(response.headers["location"]).text
        with open(os.path.join(job.target, "predictions.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 30 and all(r["label"] and r["predicted"] for r in rows)
        right = sum(r["label"] == r["predicted"] for r in rows)
        assert f"{100 * right / 30:.2f}% of 30 labelled images" in page
        assert 'id="confusion-matrix"' in page and page.count('class="thumb') >= 10
        assert f"/runs/{run.id}/classify/{many_job}" in client.get(f"/runs/{run.id}").text

        # A new model from an uploaded weights file (this run's model.keras), kept in the store.
        with open(os.path.join(run_dir, "model.keras"), "rb") as f:
            response = client.post("/models/new", data=dict(_train_form(dataset.id, "tuned", 1),
                                                            pretrained="file"),
                                   files={"weights_upload": ("lenet <v1>.keras", f.read(),
                                                             "application/zip")},
                                   follow_redirects=False)
        assert response.status_code == 303, response.text
        job = _wait("the fine-tune", lambda: _finished(int(response.headers["location"]
                                                            .rsplit("/", 1)[1])))
        assert job.status == "completed", open(job.log_path).read()
        weights = RunFolder(job.target).read_run_info().model.weights
        assert weights.startswith(settings.folder("weights")) and weights.endswith("<v1>.keras")
        tuned = _entry("run", job.target)
        assert "Pretrained: weights file lenet &lt;v1&gt;.keras" in client.get(f"/runs/{tuned.id}").text
        assert "lenet &lt;v1&gt;.keras" in client.get("/models/new").text  # Offered again.


def test_restart_marks_running_job_interrupted_and_keeps_the_queue(mnist_small, tmp_path):
    settings = UISettings(data_roots=[mnist_small], max_jobs=1)
    first = JobQueue(settings)
    data_dir = os.path.join(settings.folder("datasets"), "d")
    dataset_job = first.submit("Dataset d", "dataset", ["dataset", "create", "--quiet"], config={
        "dataset": DatasetConfig(source=os.path.join(mnist_small, "train"), output=data_dir,
                                 max_per_class=10)}, target=data_dir, target_kind="dataset")
    assert _wait("the dataset", lambda: _finished(dataset_job), first).status == "completed"

    runs = [os.path.join(settings.folder("runs"), name) for name in ("a", "b")]
    config = {"model": ModelConfig(name="lenet"),
              "train": TrainConfig(epochs=200, batch_size=8, steps_per_epoch=2)}
    ids = [first.submit(f"Train {os.path.basename(r)}", "train",
                        ["train", "--dataset", data_dir, "--run", r, "--quiet"], config=config,
                        target=r, target_kind="run") for r in runs]
    first.tick()
    assert [_job(i).status for i in ids] == ["running", "queued"]  # max_jobs=1
    _wait("a checkpoint", lambda: RunFolder(runs[0]).exists()
          and RunFolder(runs[0]).latest_checkpoint() is not None, first)
    pid = _job(ids[0]).pid

    # A new UI process on the same registry; the first one never stopped (a crash).
    second = JobQueue(settings)
    assert second.recover() == [ids[0]]
    assert _job(ids[0]).status == "interrupted"
    assert RunFolder(runs[0]).read_run_info().status == "interrupted"
    assert first._procs[ids[0]].wait(timeout=60) in (130, -15)  # Ended by SIGTERM.
    assert pid == first._procs[ids[0]].pid
    assert resume_argv(_job(ids[0])) == ["train", "--resume", "--run", runs[0]]
    assert _job(ids[1]).status == "queued"
    assert second.abort(ids[1]).status == "aborted"


def test_network_preview_builds_the_custom_network_for_the_dataset(tmp_path, monkeypatch):
    # Started where a folder named vispipe would shadow the installed package (issue 10,
    # finding 7): the child that builds the network runs vispipe's own code all the same.
    (tmp_path / "vispipe").mkdir()
    (tmp_path / "vispipe" / "__init__.py").write_text("raise ImportError('the wrong vispipe')\n")
    monkeypatch.chdir(tmp_path)
    code = (
        "import keras\n"
        "def build(input_shape, num_classes):\n"
        "    inputs = keras.Input(input_shape)\n"
        "    a = keras.layers.Conv2D(4, 3, name='left')(inputs)\n"
        "    b = keras.layers.Conv2D(4, 3, name='right')(inputs)\n"
        "    x = keras.layers.Flatten()(keras.layers.Add(name='join')([a, b]))\n"
        "    return keras.Model(inputs, keras.layers.Dense(num_classes, name='logits')(x))\n")
    settings = UISettings(data_roots=[str(tmp_path)])
    with _client(settings, start_jobs=False) as client:
        body = client.post("/models/network-preview", data={"custom_code": code}).json()
        layers = {layer["name"]: layer for layer in body["layers"]}
        assert layers["join"]["inputs"] == ["left", "right"]
        assert layers["left"]["output_shape"] == [None, 26, 26, 4]  # 28x28x1 without a dataset
        assert layers["logits"]["params"] == 26 * 26 * 4 * 10 + 10
        assert layers["predictions"]["type"] == "Activation"  # Appended softmax, as in training.
        assert body["total_params"] == 2 * (9 * 4 + 4) + 26 * 26 * 4 * 10 + 10
        assert body["built_for"].startswith("no dataset chosen")
        # The drawn graph: both branches one row below the input, arrows into the Add.
        svg = body["graph_svg"]
        assert svg.startswith("<svg") and svg.count('class="layer"') == len(body["layers"])
        for name, depth in (("left", 1), ("right", 1), ("join", 2)):
            assert f'data-layer="{name}" data-depth="{depth}"' in svg
        assert 'data-from="left" data-to="join"' in svg
        assert 'data-from="right" data-to="join"' in svg

        wrong = client.post("/models/network-preview", data={"custom_code": code.replace(
            "Dense(num_classes", "Dense(3")})
        assert wrong.status_code == 400
        assert "expected (None, 10) for 10 classes" in wrong.json()["errors"]["custom_code"]
        assert Registry.open().list("job") == []
